"""Measured child processes: each invocation is one tool run, ending with one JSON line on stdout.

The benchmark runs these as subprocesses so that their wall clock and peak RSS are their own:

    python bench/workers.py copy-read --dsn DSN --table public.wide
    python bench/workers.py dlt-load --dsn DSN --table public.wide --dest DIR [--chunk-size 50000]

``copy-read`` streams ``copy (select * from t) to stdout`` through psycopg and discards the bytes
(the client-library cost of the physical limit). ``dlt-load`` runs dlt's ``sql_table`` source with
the pyarrow backend into dlt's filesystem destination as a Delta table (full load, replace), the
way dlt's documentation sets it up, and prints where the table landed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["DLT_DATASET", "dlt_table_path", "main"]

DLT_DATASET = "bench"


def dlt_table_path(dest: Path, table: str) -> Path:
    """Where ``dlt-load --dest dest`` writes ``table`` (dlt's layout: bucket/dataset/table)."""
    return dest / "lake" / DLT_DATASET / _split(table)[1]


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def _copy_read(dsn: str, table: str) -> dict[str, object]:
    import psycopg
    from psycopg import sql

    started = time.perf_counter()
    nbytes = 0
    reads = 0
    stmt = sql.SQL("copy (select * from {}) to stdout").format(sql.Identifier(*_split(table)))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(stmt) as copy:
        while data := copy.read():
            nbytes += len(data)
            reads += 1
    # reads: how many copy.read() calls returned data (psycopg returns one CopyData message each).
    return {"bytes": nbytes, "reads": reads, "seconds": time.perf_counter() - started}


def _dlt_load(dsn: str, table: str, dest: Path, chunk_size: int) -> dict[str, object]:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.destinations import filesystem
    from dlt.sources.sql_database import sql_table

    schema, name = _split(table)
    # dlt reads through SQLAlchemy; psycopg2 is the driver its PostgreSQL docs use.
    credentials = "postgresql+psycopg2://" + dsn.split("://", 1)[1]
    resource = sql_table(
        credentials=credentials, table=name, schema=schema, backend="pyarrow", chunk_size=chunk_size
    )
    pipeline = dlt.pipeline(
        pipeline_name="snapshot_bench",
        pipelines_dir=str(dest / "pipelines"),
        destination=filesystem(bucket_url=(dest / "lake").as_uri()),
        dataset_name=DLT_DATASET,
    )
    started = time.perf_counter()
    pipeline.run(resource, table_format="delta", write_disposition="replace")
    seconds = time.perf_counter() - started
    steps: dict[str, float] = {}
    trace = pipeline.last_trace
    for step in trace.steps if trace is not None else []:
        if step.finished_at is not None:
            steps[step.step] = (step.finished_at - step.started_at).total_seconds()
    return {
        "seconds": seconds,
        "steps": steps,
        "table_path": str(dlt_table_path(dest, table)),
        "dlt": dlt.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="worker", required=True)
    copy_read = sub.add_parser("copy-read", help="COPY a table through psycopg and discard the bytes")
    copy_read.add_argument("--dsn", required=True)
    copy_read.add_argument("--table", required=True, help="schema.table")
    dlt_load = sub.add_parser("dlt-load", help="load a table into Delta with dlt (sql_table + filesystem)")
    dlt_load.add_argument("--dsn", required=True, help="postgresql:// URL")
    dlt_load.add_argument("--table", required=True, help="schema.table")
    dlt_load.add_argument("--dest", required=True, type=Path, help="working directory for dlt")
    dlt_load.add_argument(
        "--chunk-size", type=int, default=50_000, help="rows per Arrow batch (dlt's default)"
    )
    args = parser.parse_args(argv)
    if args.worker == "copy-read":
        result = _copy_read(args.dsn, args.table)
    else:
        result = _dlt_load(args.dsn, args.table, args.dest, args.chunk_size)
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
