"""The ``verify`` report: one line per table and a few example keys (key values only, never other columns)."""

from __future__ import annotations

from collections.abc import Sequence

from cdc_replicator.engine.rangediff import Key
from cdc_replicator.engine.verify import TableVerdict

__all__ = ["EXAMPLES", "render_verdict"]

EXAMPLES = 5


def _key(names: Sequence[str], key: Key) -> str:
    parts = [f"{n}={v}" for n, v in zip(names, key, strict=True)]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def _examples(names: Sequence[str], keys: Sequence[Key]) -> str:
    shown = ", ".join(_key(names, k) for k in keys[:EXAMPLES])
    more = len(keys) - EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def render_verdict(v: TableVerdict, key_names: Sequence[str], *, label: str = "") -> str:
    """``table T: rows=… ranges=… missing=… extra=… differing=… changed_since=… seconds=… -> equal``."""
    head = (
        f"table {v.table}{label}: rows={v.rows} ranges={v.ranges} missing={len(v.missing)} "
        f"extra={len(v.extra)} differing={len(v.differing)} changed_since={v.changed_since} "
        f"seconds={v.seconds:.2f} -> {'equal' if v.equal else 'different'}"
    )
    lines = [head]
    for what, keys in (("missing", v.missing), ("extra", v.extra), ("differing", v.differing)):
        if keys:
            lines.append(f"  {what}: {_examples(key_names, keys)}")
    return "\n".join(lines)
