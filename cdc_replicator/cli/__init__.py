"""The command line (``cdc-replicator``): click commands, the status report and the load progress display."""

from cdc_replicator.cli.commands import main

__all__ = ["main"]
