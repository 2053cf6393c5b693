"""What bounds a merge's rewrite: file size, update pattern and z-order, through the daemon's own sink.

    python bench/merge_layout.py [--rows 2000000] [--merges 20] [--changes 2000]
        [--sizes 4194304,16777216,67108864] [--zorder-every 5] [--out bench/results/merge_layout.json]

No PostgreSQL: a Delta table of ROWS rows (``id`` key, an integer, a 32-character text, as
``write_amplification.py``'s ``big``) is written in key order at each target file size, then MERGES
batches of CHANGES updates go through ``DeltaSink.apply`` (the daemon's merge, key-range
predicate included), with the keys drawn

- *random*: uniformly from the whole table;
- *clustered*: from a hot range of 1 % of the keys in the middle of the table (so the files
  around it have the target size, not the smaller last file of the load);
- *clustered + z-order*: as clustered, with ``optimize.z_order(["id"])`` every ZORDER_EVERY merges
  (its bytes are counted as written too).

Per variant: bytes added per merge (median), files rewritten per merge, rows copied, merge seconds,
and *amplification* = bytes added / (changed rows × the table's Parquet bytes per row). Seconds are
noisy on a shared machine; bytes are not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from common import MIB, format_table, git_revision, machine_info, package_versions
from deltalake import DeltaTable, write_deltalake

from cdc_replicator.model import Column, Lsn, Op, TableId, TablePatch, TablePosition, TableSchema
from cdc_replicator.sink.delta import DeltaSink
from cdc_replicator.sink.plan import target_schema

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "merge_layout.json"
HOT_SHARE = 0.01
TABLE = TableId("public", "big")
SCHEMA = TableSchema(TABLE, (Column("id", 20, -1, True), Column("v", 23), Column("pad", 25)))


@dataclass
class Variant:
    pattern: str
    file_size: int
    zorder_every: int
    table_files: int
    table_bytes: int
    bytes_per_row: float
    merges: int
    changes_per_merge: int
    median_bytes_added: float
    median_files_removed: float
    median_rows_copied: float
    median_seconds: float
    zorder_bytes: int
    zorder_seconds: float
    amplification: float
    files_after: int


def _build(uri: str, rows: int, file_size: int) -> None:
    tschema = target_schema(SCHEMA, soft_delete=False)
    now = datetime.now(UTC)

    def batches() -> Iterator[pa.RecordBatch]:
        step = 500_000
        for lo in range(1, rows + 1, step):
            hi = min(rows + 1, lo + step)
            ids = pa.array(range(lo, hi), pa.int64())
            k = len(ids)
            yield pa.RecordBatch.from_arrays(
                [
                    ids,
                    pa.repeat(pa.scalar(0, pa.int32()), k),
                    pa.array([f"{j:032x}" for j in range(lo, hi)], pa.string()),
                    pa.repeat(pa.scalar(1, pa.int64()), k),
                    pa.repeat(pa.scalar(Op.SNAPSHOT.value, pa.string()), k),
                    pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), k),
                ],
                schema=tschema,
            )

    write_deltalake(
        uri,
        pa.RecordBatchReader.from_batches(tschema, batches()),
        target_file_size=file_size,
        configuration={"delta.targetFileSize": str(file_size)},
    )


def _live(uri: str) -> tuple[int, int, int]:
    actions = DeltaTable(uri).get_add_actions(flatten=True)
    sizes = [int(x) for x in actions.column("size_bytes").to_pylist()]
    rows = sum(int(x or 0) for x in actions.column("num_records").to_pylist())
    return len(sizes), sum(sizes), rows


def run_variant(
    root: Path, pattern: str, file_size: int, zorder_every: int, rows: int, merges: int, changes: int
) -> Variant:
    lake = root / f"{pattern}-{file_size}-{zorder_every}"
    uri = str(lake / TABLE.schema / TABLE.name)
    _build(uri, rows, file_size)
    files, size, live_rows = _live(uri)
    per_row = size / live_rows
    sink = DeltaSink(str(lake), slot="bench", target_file_size=file_size)
    rng = random.Random(14)
    lo, hi = (1, rows) if pattern == "random" else (rows // 2, rows // 2 + int(rows * HOT_SHARE))
    added: list[float] = []
    removed: list[float] = []
    copied: list[float] = []
    seconds: list[float] = []
    z_bytes = 0
    z_seconds = 0.0
    now = datetime.now(UTC)
    for m in range(1, merges + 1):
        keys = sorted(rng.sample(range(lo, hi + 1), changes))
        patch_rows = pa.table(
            {
                "id": pa.array([str(k).encode() for k in keys], pa.binary()),
                "v": pa.array([str(m).encode()] * changes, pa.binary()),
                "pad": pa.array([b"changed" * 4] * changes, pa.binary()),
                "_cdc_lsn": pa.repeat(pa.scalar(m + 1, pa.int64()), changes),
                "_cdc_op": pa.repeat(pa.scalar(Op.UPDATE.value, pa.string()), changes),
                "_cdc_committed_at": pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), changes),
            }
        )
        started = time.perf_counter()
        sink.apply(TablePatch(SCHEMA, patch_rows, changes=changes), TablePosition(Lsn(m + 1)))
        seconds.append(time.perf_counter() - started)
        metrics = DeltaTable(uri).history(1)[0].get("operationMetrics", {})
        removed.append(float(metrics.get("num_target_files_removed", 0)))
        copied.append(float(metrics.get("num_target_rows_copied", 0)))
        added.append(float(_added_bytes(uri)))
        if zorder_every and m % zorder_every == 0:
            started = time.perf_counter()
            DeltaTable(uri).optimize.z_order(["id"], target_size=file_size)
            z_seconds += time.perf_counter() - started
            z_bytes += _added_bytes(uri)
    files_after = _live(uri)[0]
    total = sum(added) + z_bytes
    variant = Variant(
        pattern=pattern + (" + z-order" if zorder_every else ""),
        file_size=file_size,
        zorder_every=zorder_every,
        table_files=files,
        table_bytes=size,
        bytes_per_row=per_row,
        merges=merges,
        changes_per_merge=changes,
        median_bytes_added=statistics.median(added),
        median_files_removed=statistics.median(removed),
        median_rows_copied=statistics.median(copied),
        median_seconds=statistics.median(seconds),
        zorder_bytes=z_bytes,
        zorder_seconds=z_seconds,
        amplification=total / (merges * changes * per_row),
        files_after=files_after,
    )
    print(
        f"  {variant.pattern:<22} {file_size / MIB:>4.0f} MiB files: {variant.median_bytes_added / MIB:.1f} MiB"
        f" per merge, {variant.median_files_removed:.0f} files rewritten, {variant.amplification:,.0f}x",
        file=sys.stderr,
        flush=True,
    )
    shutil.rmtree(lake, ignore_errors=True)
    return variant


def _added_bytes(uri: str) -> int:
    """Bytes of the files the table's newest commit added."""
    dt = DeltaTable(uri)
    log = Path(uri) / "_delta_log" / f"{dt.version():020d}.json"
    total = 0
    for line in log.read_text().splitlines():
        action = json.loads(line)
        if "add" in action:
            total += int(action["add"]["size"])
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--merges", type=int, default=12)
    p.add_argument("--changes", type=int, default=2000)
    p.add_argument("--sizes", default=f"{2 * MIB},{8 * MIB},{32 * MIB}")
    p.add_argument("--zorder-every", type=int, default=5)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="cdc-merge-layout-"))
    variants: list[Variant] = []
    try:
        for size in sizes:
            for pattern, z in (("random", 0), ("clustered", 0), ("clustered", a.zorder_every)):
                variants.append(run_variant(root, pattern, size, z, a.rows, a.merges, a.changes))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        [
            v.pattern,
            f"{v.file_size / MIB:.0f}",
            f"{v.table_files}",
            f"{v.median_bytes_added / MIB:.1f}",
            f"{v.median_files_removed:.0f}",
            f"{v.median_rows_copied:,.0f}",
            f"{v.median_seconds:.2f}",
            f"{v.zorder_bytes / MIB:.0f}" if v.zorder_every else "-",
            f"{v.amplification:,.0f}",
            f"{v.files_after}",
        ]
        for v in variants
    ]
    headers = [
        "pattern",
        "file MiB",
        "files",
        "MiB/merge",
        "files rewritten",
        "rows copied",
        "s/merge",
        "z-order MiB",
        "x append",
        "files after",
    ]
    print(f"{a.rows:,} rows, {a.merges} merges of {a.changes:,} updates each (medians per merge)")
    print(format_table(headers, rows))
    report = {
        "when": datetime.now(UTC).isoformat(),
        "seconds": time.perf_counter() - started,
        "options": {k: str(v) for k, v in vars(a).items()},
        "machine": machine_info(),
        "git": git_revision(REPO_DIR),
        "versions": package_versions(["cdc-replicator", "deltalake", "pyarrow"]),
        "variants": [asdict(v) for v in variants],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {a.out} ({report['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
