"""The config values: one frozen dataclass per section, each field one key declared once (see keys.py).

A field's default is the key's default (none: required), its metadata the converter that validates a
raw value, a one-line doc and, for secrets, the redaction ``repr`` applies. The longer story of each
key, with its environment variable, is config/example.toml (a test holds the two together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from cdc_replicator.config import converters as c
from cdc_replicator.config.keys import key, redacted_repr
from cdc_replicator.config.redact import redact_dsn, redact_options
from cdc_replicator.model import ColumnSelection, TableId
from cdc_replicator.types.partitions import PartitionColumn

SourceMode = Literal["logical", "watermark"]
HeartbeatKind = Literal["message", "table"]
ReaderKind = Literal["process", "thread"]
ContractName = Literal["evolve", "freeze"]
LogFormat = Literal["auto", "text", "json"]
_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True, repr=False)
class SourceConfig:
    """Where changes come from. ``repr`` redacts the DSN password."""

    dsn: str = field(
        metadata=key(c.libpq_dsn, "libpq connection string (URL or key=value form).", redact=redact_dsn)
    )
    password_file: str = field(
        default="",
        metadata=key(c.any_str, "File whose first line is the source password (instead of one in dsn)."),
    )
    mode: SourceMode = field(
        default="logical",
        metadata=key(
            c.one_of(SourceMode), "logical streams the WAL from a slot; watermark polls the tables."
        ),
    )
    slot: str = field(default="cdc_replicator", metadata=key(c.slot_name, "Logical replication slot name."))
    publication: str = field(default="cdc_replicator", metadata=key(c.pg_name, "Publication name."))
    streaming: bool = field(
        default=False,
        metadata=key(c.boolean, "pgoutput protocol 2: stream in-progress transactions."),
    )
    status_interval_seconds: float = field(
        default=10.0, metadata=key(c.positive_float, "Seconds between standby status updates.")
    )
    connect_timeout_seconds: float = field(
        default=10.0, metadata=key(c.positive_float, "Seconds to wait for a connection.")
    )
    wal_receiver_timeout_seconds: float = field(
        default=60.0,
        metadata=key(
            c.nonnegative_float,
            "Seconds without a byte from the source before its path counts as dead; 0 = never.",
        ),
    )
    retry_max_seconds: float = field(
        default=30.0,
        metadata=key(c.positive_float, "Cap of the exponential backoff between reconnect attempts."),
    )
    retry_reset_seconds: float = field(
        default=1.0,
        metadata=key(
            c.nonnegative_float,
            "The reconnect backoff starts again from its first wait once a stream was healthy this long.",
        ),
    )
    retry_give_up_seconds: float = field(
        default=0.0,
        metadata=key(
            c.nonnegative_float, "Exit after the source is unreachable this long; 0 = retry forever."
        ),
    )
    heartbeat_interval_seconds: float = field(
        default=0.0,
        metadata=key(c.nonnegative_float, "Seconds between heartbeat writes to the source; 0 = none."),
    )
    heartbeat: HeartbeatKind = field(
        default="message",
        metadata=key(c.one_of(HeartbeatKind), "pg_logical_emit_message, or an update of a heartbeat table."),
    )
    slot_check_interval_seconds: float = field(
        default=15.0,
        metadata=key(c.positive_float, "Seconds between checks of the slot's lag, retained WAL, wal_status."),
    )
    max_retained_wal_bytes: int = field(
        default=4 * 1024 * _MIB,
        metadata=key(c.nonnegative_int, "Warn when the slot retains more WAL than this; 0 = never warn."),
    )
    slot_create_timeout_seconds: float = field(
        default=300.0,
        metadata=key(c.positive_float, "Give up creating the slot (it waits for running transactions)."),
    )
    reader: ReaderKind = field(
        default="process",
        metadata=key(c.one_of(ReaderKind), "Read and decode the stream in a child process or a thread."),
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class TargetConfig:
    """Where the Delta tables live: ``<uri>/<schema>/<table>``. ``repr`` hides secret-looking options.

    ``storage_options`` are (name, value) pairs sorted by name, passed to deltalake as a dict.
    """

    uri: str = field(
        metadata=key(c.storage_uri, "Root of the Delta tables: a local path or object-store URI.")
    )
    storage_options: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=key(
            c.any_str, "Object-store options passed to deltalake.", redact=redact_options, options=True
        ),
    )
    # A merge rewrites every file that holds a changed key: small files keep merges into big tables
    # cheap (10k clustered changes into 10M vs 1M rows, measured with bench/stream_bench.py's merge
    # scenario at each size: 5.6x the time at 128 MiB, 4.7x at 64, 2.4x at 32, 1.5x at 16).
    target_file_size: int = field(
        default=16 * _MIB, metadata=key(c.positive_int, "Size deltalake aims for in a data file, in bytes.")
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class TableConfig:
    """One replicated table; its primary key is read from the catalog.

    Watermark mode only: ``cursor`` (one or more columns, compared as a tuple with the key as the
    tie-breaker), ``delete_column`` (a non-NULL value marks the row deleted), and per-table
    overrides of ``[watermark] poll_interval_seconds`` / ``page_size`` (0 = the section's value).
    """

    name: TableId = field(metadata=key(c.table_name, "schema.table; a bare name means public.<name>."))
    soft_delete: bool = field(
        default=False, metadata=key(c.boolean, "Keep deleted rows in Delta, marked deleted.")
    )
    contract: ContractName = field(
        default="evolve",
        metadata=key(
            c.one_of(ContractName), "What a schema change may do: evolve follows it, freeze pauses."
        ),
    )
    columns: tuple[str, ...] = field(
        default=(), metadata=key(c.column_list, "Replicate only these columns (with the key); empty = all.")
    )
    exclude_columns: tuple[str, ...] = field(
        default=(), metadata=key(c.column_list, "Replicate all columns but these (never a key column).")
    )
    cursor: tuple[str, ...] = field(
        default=(), metadata=key(c.column_list, "Watermark mode: the column(s) that grow with every change.")
    )
    delete_column: str = field(
        default="", metadata=key(c.pg_name, "Watermark mode: a non-NULL value marks the row deleted.")
    )
    poll_interval_seconds: float = field(
        default=0.0,
        metadata=key(c.nonnegative_float, "Watermark mode: this table's poll interval; 0 = [watermark]'s."),
    )
    page_size: int = field(
        default=0,
        metadata=key(c.nonnegative_int, "Watermark mode: this table's page size; 0 = [watermark]'s."),
    )
    # ---- partitioning (issue 14, part "part") ----
    partition_by: tuple[PartitionColumn, ...] = field(
        default=(),
        metadata=key(c.partition_list, "Partition the Delta table by these columns or year/month/day(c)."),
    )
    # --- lake maintenance (issue 14, part "maint"): overrides of [maintenance]; 0 = the section's value
    retention_hours: float = field(
        default=0.0,
        metadata=key(
            c.nonnegative_float, "This table's removed-file and log retention; 0 = [maintenance]'s."
        ),
    )
    interval_seconds: float = field(
        default=0.0,
        metadata=key(c.nonnegative_float, "Seconds between maintenance passes of it; 0 = [maintenance]'s."),
    )
    # -- issue 14, change data feed (cdf): the table's delta.enableChangeDataFeed --
    change_data_feed: bool = field(
        default=False,
        metadata=key(c.boolean, "Write the Delta change data feed of this table (enableChangeDataFeed)."),
    )
    # -- write amplification (issue 14, amp): a merge rewrites each file holding a changed key, so a
    # table updated in a hot key range writes about one file per merge: smaller files, fewer bytes
    # (bench/merge_layout.py). Becomes the table's delta.targetFileSize from its next load or merge.
    target_file_size: int = field(
        default=0,
        metadata=key(c.nonnegative_int, "This table's target data file size in bytes; 0 = [target]'s."),
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class BatchConfig:
    """A batch closes at a commit boundary as soon as any limit is reached."""

    max_rows: int = field(default=100_000, metadata=key(c.positive_int, "Changed rows in a batch, at most."))
    max_bytes: int = field(
        default=256 * _MIB,
        metadata=key(c.positive_int, "Bytes of row data a batch holds in memory, at most."),
    )
    max_seconds: float = field(
        default=2.0, metadata=key(c.positive_float, "Seconds since the batch's first change, at most.")
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class SnapshotConfig:
    """Table loads (initial load and ``cdc-replicator snapshot``)."""

    parallel: int = field(
        default=0,
        metadata=key(c.nonnegative_int, "Connections copying at once; 0 = one per core, at most 4."),
    )
    chunk_rows: int = field(
        default=500_000, metadata=key(c.positive_int, "Rows per chunk (one Delta commit, about one file).")
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class WatermarkConfig:
    """Polling a (read replica) database with high-watermark queries: ``source.mode = "watermark"``."""

    poll_interval_seconds: float = field(
        default=5.0, metadata=key(c.positive_float, "Seconds between polls of a table.")
    )
    page_size: int = field(
        default=10_000, metadata=key(c.positive_int, "Rows per page query (and at most per Delta commit).")
    )
    # each poll re-reads this far behind the settled watermark (temporal cursors: seconds; numeric
    # cursors: the same number in the cursor's units): rows of transactions that took their cursor
    # value before a poll but wrote it after
    lookback_seconds: float = field(
        default=0.0,
        metadata=key(c.nonnegative_float, "How far behind the settled watermark a poll re-reads."),
    )
    statement_timeout_seconds: float = field(
        default=60.0, metadata=key(c.positive_float, "Statement timeout of the poll queries, in seconds.")
    )
    reconcile_interval_seconds: float = field(
        default=0.0,
        metadata=key(c.nonnegative_float, "Seconds between key comparisons finding hard deletes; 0 = never."),
    )
    reconcile_range_rows: int = field(
        default=50_000, metadata=key(c.positive_int, "Keys per compared range.")
    )
    reconcile_max_rows_per_second: int = field(
        default=200_000, metadata=key(c.positive_int, "Rate limit of the key reads, rows per second.")
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class VerifyConfig:
    """``cdc-replicator verify``: comparing each Delta table with its source, range by range."""

    range_rows: int = field(
        default=10_000, metadata=key(c.positive_int, "Rows per compared key range (read into memory).")
    )
    max_rows_per_second: int = field(
        default=50_000,
        metadata=key(c.nonnegative_int, "Rate limit of the reads (both sides), rows per second; 0 = none."),
    )
    wait_seconds: float = field(
        default=60.0,
        metadata=key(c.positive_float, "How long to wait for Delta to reach a range's source snapshot."),
    )
    recheck_rounds: int = field(
        default=2,
        metadata=key(c.nonnegative_int, "Fresh snapshots a difference must survive before it is reported."),
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class MaintenanceConfig:
    """Lake maintenance in the daemon (and ``cdc-replicator maintain``): compaction, checkpoints, vacuum.

    ``retention_hours`` is set on every table as ``delta.deletedFileRetentionDuration`` and
    ``delta.logRetentionDuration``, so that other writers (and their vacuums) agree with ours.
    """

    enabled: bool = field(default=True, metadata=key(c.boolean, "Run maintenance passes in the daemon."))
    # each pass of a table costs a log read and a storage listing (vacuum): every 10 minutes keeps
    # a busy table's small files and unvacuumed bytes bounded to ~10 minutes of batches, for
    # a few LIST requests an hour on an object store
    interval_seconds: float = field(
        default=600.0, metadata=key(c.positive_float, "Seconds between maintenance passes of a table.")
    )
    retention_hours: float = field(
        default=168.0,
        metadata=key(c.positive_float, "How long removed files and log entries are kept (time travel)."),
    )
    compact_min_files: int = field(
        default=8,
        metadata=key(c.positive_int, "Compact when a table has more small files than this."),
    )
    zorder: bool = field(
        default=False,
        metadata=key(c.boolean, "Z-order compacted tables by their primary key (rewrites the table)."),
    )
    checkpoint_min_commits: int = field(
        default=10,
        metadata=key(c.positive_int, "Write a checkpoint when this many commits came since the last."),
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class StateConfig:
    """The SQLAlchemy URL of the operational state store."""

    url: str = field(
        default="sqlite:///./state/cdc.db",
        metadata=key(c.sqlalchemy_url, "SQLAlchemy URL of the operational state store."),
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True, repr=False)
class ServerConfig:
    """The /healthz, /readyz and /metrics listener. ``listen`` is ``host:port`` (``[v6addr]:port``)."""

    listen: str = field(
        default="127.0.0.1:9187",
        metadata=key(c.listen, "host:port of the /healthz, /readyz, /metrics listener."),
    )
    enabled: bool = field(default=True, metadata=key(c.boolean, "Serve those endpoints at all."))
    liveness_timeout_seconds: float = field(
        default=120.0,
        metadata=key(c.positive_float, "/healthz answers 503 after this many seconds without progress."),
    )
    stop_timeout_seconds: float = field(
        default=60.0,
        metadata=key(c.nonnegative_float, "A graceful stop longer than this exits at once; 0 = no bound."),
    )

    __repr__ = redacted_repr

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True, slots=True, repr=False)
class LogConfig:
    """Logging: ``level`` is a lower-case level name; ``format`` auto means text on a TTY, else JSON."""

    level: str = field(default="info", metadata=key(c.log_level, "debug, info, warning, error or critical."))
    format: LogFormat = field(
        default="auto",
        metadata=key(c.one_of(LogFormat), "text, json, or auto (text on a terminal, else JSON)."),
    )

    __repr__ = redacted_repr


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration: each field is a section (a tuple of them: ``[[tables]]``)."""

    source: SourceConfig
    target: TargetConfig
    tables: tuple[TableConfig, ...]
    batch: BatchConfig = BatchConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    state: StateConfig = StateConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    watermark: WatermarkConfig = WatermarkConfig()
    verify: VerifyConfig = VerifyConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()

    @property
    def table_ids(self) -> tuple[TableId, ...]:
        return tuple(t.name for t in self.tables)

    @property
    def selections(self) -> dict[TableId, ColumnSelection]:
        """Which columns of each table are replicated (``columns`` / ``exclude_columns``)."""
        return {
            t.name: ColumnSelection(frozenset(t.columns), frozenset(t.exclude_columns)) for t in self.tables
        }

    def table(self, tid: TableId) -> TableConfig:
        """The configuration of table ``tid``; KeyError if it is not configured."""
        for t in self.tables:
            if t.name == tid:
                return t
        raise KeyError(f"{tid} is not a configured table")
