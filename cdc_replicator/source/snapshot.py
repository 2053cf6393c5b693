"""COPY a table inside an exported snapshot and stream it as Arrow record batches. No Delta here.

Rows travel as PostgreSQL's CSV text and are split into columns by Arrow's CSV reader (vectorised),
so the values are exactly the text forms the replication stream carries; ``typemap`` casts both.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from cdc_replicator.errors import SourceError
from cdc_replicator.model import TableSchema
from cdc_replicator.source.replication import classify_error

__all__ = ["copy_table"]

_BLOCK = 8 * 1024 * 1024


class _CopyStream(io.RawIOBase):
    """A read-only file over ``COPY ... TO STDOUT`` chunks, for Arrow's streaming CSV reader."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self._copy = copy
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def at_end(self) -> bool:
        """Read ahead one chunk: True when the COPY produced no data at all (an empty table)."""
        if not self._buf:
            self._buf = memoryview(self._copy.read())
        return not self._buf

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = self._copy.read()
            if not chunk:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def copy_table(
    conn: psycopg.Connection[tuple[object, ...]],
    schema: TableSchema,
    *,
    snapshot: str | None,
    block_size: int = _BLOCK,
) -> Iterator[pa.RecordBatch]:
    """Yield the table's rows (columns as ``binary`` text) read in ``snapshot`` (None: a fresh one).

    Memory stays at a few blocks whatever the table size. The connection must not be in a
    transaction; this opens and ends a REPEATABLE READ, READ ONLY one.
    """
    names = list(schema.column_names)
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    query = sql.SQL("copy (select {} from {}) to stdout (format csv)").format(
        cols, sql.Identifier(schema.table.schema, schema.table.name)
    )
    try:
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read, read only")
            if snapshot is not None:
                conn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
            with conn.cursor().copy(query) as copy:
                stream = _CopyStream(copy)
                if stream.at_end():
                    return
                reader = pacsv.open_csv(
                    io.BufferedReader(stream, buffer_size=block_size),
                    read_options=pacsv.ReadOptions(
                        column_names=names, block_size=block_size, use_threads=False
                    ),
                    parse_options=pacsv.ParseOptions(newlines_in_values=True, double_quote=True),
                    convert_options=pacsv.ConvertOptions(
                        column_types={n: pa.binary() for n in names},
                        null_values=[""],
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                )
                yield from reader
    except psycopg.OperationalError as exc:
        raise classify_error(str(exc), context=f"copy of {schema.table} failed") from exc
    except psycopg.Error as exc:
        raise SourceError(f"copy of {schema.table} failed: {str(exc).strip()}") from exc
