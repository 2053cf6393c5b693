"""cdc-replicator: copy PostgreSQL tables into Delta Lake tables and keep them in step, exactly once."""

__version__ = "0.1.0"

__all__ = ["__version__"]
