"""The configuration: frozen dataclasses loaded from TOML, every key overridable by environment.

Each key is declared once, as a field of its section's dataclass (``sections.py``: name, type,
default, converter, one-line doc, redaction); ``keys.py`` derives environment variable names and
``repr`` from those declarations, ``load.py`` reads the file and the environment and validates,
``converters.py`` holds the value checks and ``redact.py`` hides secrets.
"""

from cdc_replicator.config.keys import ENV_PREFIX
from cdc_replicator.config.load import load_config
from cdc_replicator.config.redact import redact_dsn
from cdc_replicator.config.sections import (
    BatchConfig,
    Config,
    LogConfig,
    LogFormat,
    MaintenanceConfig,
    ServerConfig,
    SnapshotConfig,
    SourceConfig,
    SourceMode,
    StateConfig,
    TableConfig,
    TargetConfig,
    VerifyConfig,
    WatermarkConfig,
)

__all__ = [
    "ENV_PREFIX",
    "BatchConfig",
    "SnapshotConfig",
    "Config",
    "LogConfig",
    "LogFormat",
    "ServerConfig",
    "SourceConfig",
    "SourceMode",
    "StateConfig",
    "TableConfig",
    "TargetConfig",
    "VerifyConfig",
    "MaintenanceConfig",
    "WatermarkConfig",
    "load_config",
    "redact_dsn",
]
