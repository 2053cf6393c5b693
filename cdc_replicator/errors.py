"""The one error tree: every error says what is wrong, how to fix it, and whether a retry can help."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContractViolation",
    "DecodeError",
    "PositionMismatch",
    "ReplicatorError",
    "SinkError",
    "SlotInUse",
    "SlotInvalidated",
    "SourceError",
    "SourceUnavailable",
    "MissingKey",
    "WalLevelNotLogical",
]


class ReplicatorError(Exception):
    """Root of every error the replicator raises on purpose.

    ``hint`` tells the operator how to fix it (often the SQL or command to run); ``retryable``
    says whether the daemon may retry by itself; ``exit_code`` is what the CLI exits with.
    """

    exit_code: int = 1
    retryable: bool = False

    def __init__(self, message: str, *, hint: str = "", retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(ReplicatorError):
    """The configuration is invalid: a key is missing, of the wrong type or out of range."""

    exit_code = 2


class SourceError(ReplicatorError):
    """The source database refused, or is not set up the way replication needs."""

    exit_code = 3


class SourceUnavailable(SourceError):
    """The source cannot be reached right now (connection refused, dropped, server restarting)."""

    retryable = True


class WalLevelNotLogical(SourceError):
    """wal_level is not 'logical', so no logical replication slot can exist."""


class MissingKey(SourceError):
    """A configured table has neither a primary key nor REPLICA IDENTITY FULL."""


class SlotInUse(SourceError):
    """Another process streams from the replication slot (probably a second replicator)."""

    retryable = True


class SlotInvalidated(SourceError):
    """The replication slot lost WAL it needed (wal_status = lost): changes are gone for good."""

    exit_code = 4


class PositionMismatch(SourceError):
    """The slot and the positions recorded in Delta disagree; streaming would lose or guess data."""

    exit_code = 4


class DecodeError(ReplicatorError):
    """A wire message could not be decoded; ``offset`` is the byte where decoding failed."""

    exit_code = 5

    def __init__(self, message: str, *, offset: int = -1, hint: str = "") -> None:
        where = f" at byte {offset}" if offset >= 0 else ""
        super().__init__(f"{message}{where}", hint=hint)
        self.offset = offset


class ContractViolation(ReplicatorError):
    """The source schema changed in a way the table's contract does not accept."""

    exit_code = 6


class SinkError(ReplicatorError):
    """Writing to a Delta table failed."""

    exit_code = 7
