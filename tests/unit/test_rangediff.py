"""Specs of the pure range comparison behind ``cdc-replicator verify``."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from cdc_replicator.engine.rangediff import diff_range, range_digest, row_digests

COLS = ("id", "v", "n")


def _src(rows: list[tuple[int, str | None, Decimal | None]]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "v": pa.array([r[1] for r in rows], pa.string()),
            "n": pa.array([r[2] for r in rows], pa.decimal128(12, 2)),
        }
    )


def _lake(
    rows: list[tuple[int, str | None, Decimal | None, int]], deleted: list[bool] | None = None
) -> pa.Table:
    t = _src([r[:3] for r in rows]).append_column("_cdc_lsn", pa.array([r[3] for r in rows], pa.int64()))
    if deleted is not None:
        t = t.append_column("_cdc_deleted", pa.array(deleted, pa.bool_()))
    return t


def _diff(src: pa.Table, lake: pa.Table, snapshot_lsn: int | None = 100):  # type: ignore[no-untyped-def]
    return diff_range(src, lake, key=("id",), columns=COLS, snapshot_lsn=snapshot_lsn)


def test_equal_ranges_are_equal_whatever_the_row_order_and_the_meta_columns() -> None:
    src = _src([(1, "a", Decimal("1.50")), (2, None, None)])
    lake = _lake([(2, None, None, 7), (1, "a", Decimal("1.50"), 9)])
    d = _diff(src, lake)
    assert d.equal and (d.source_rows, d.lake_rows) == (2, 2)


def test_a_missing_an_extra_and_a_differing_row_are_told_apart_by_key() -> None:
    src = _src([(1, "a", None), (2, "b", None), (3, "c", None)])
    lake = _lake([(1, "a", None, 5), (3, "C", None, 5), (4, "d", None, 5)])
    d = _diff(src, lake)
    assert (d.missing, d.extra, d.differing) == (((2,),), ((4,),), ((3,),))
    assert not d.equal and d.candidates == {(2,), (3,), (4,)}


def test_a_null_and_an_empty_string_differ() -> None:
    d = _diff(_src([(1, None, None)]), _lake([(1, "", None, 5)]))
    assert d.differing == ((1,),)


def test_rows_delta_wrote_after_the_snapshot_are_changed_since_never_different() -> None:
    src = _src([(1, "old", None), (2, "b", None)])
    lake = _lake([(1, "new", None, 101), (3, "inserted later", None, 150)])
    d = _diff(src, lake, snapshot_lsn=100)
    assert d.equal is False  # key 2 is missing and was not written since
    assert d.missing == ((2,),) and d.differing == () and d.extra == ()
    assert set(d.changed_since) == {(1,), (3,)}


def test_without_a_snapshot_lsn_every_row_is_compared() -> None:
    d = _diff(_src([(1, "old", None)]), _lake([(1, "new", None, 101)]), snapshot_lsn=None)
    assert d.differing == ((1,),)


def test_soft_deleted_rows_count_as_absent_and_a_late_soft_delete_is_changed_since() -> None:
    src = _src([(1, "a", None), (2, "b", None)])
    lake = _lake([(1, "a", None, 5), (2, "b", None, 5), (9, "gone", None, 5)], deleted=[False, True, True])
    d = _diff(src, lake)
    assert d.missing == ((2,),) and d.extra == ()
    late = _lake([(1, "a", None, 5), (2, "b", None, 120)], deleted=[False, True])
    assert _diff(src, late).equal and _diff(src, late).changed_since == ((2,),)


def test_a_composite_key_is_compared_as_a_whole() -> None:
    src = pa.table({"a": [1, 1], "b": ["x", "y"], "v": [1, 2]})
    lake = pa.table({"a": [1, 1], "b": ["x", "z"], "v": [1, 2], "_cdc_lsn": [1, 1]})
    d = diff_range(src, lake, key=("a", "b"), columns=("a", "b", "v"), snapshot_lsn=10)
    assert d.missing == ((1, "y"),) and d.extra == ((1, "z"),)


def test_restricting_keeps_only_the_keys_every_round_found() -> None:
    d = _diff(_src([(1, "a", None), (2, "b", None)]), _lake([(3, "c", None, 5)]))
    r = d.restricted({(2,), (3,)})
    assert (r.missing, r.extra) == (((2,),), ((3,),))


def test_digests_keep_nan_negative_zero_and_null_apart() -> None:
    t = pa.table({"f": pa.array([float("nan"), -0.0, 0.0, None], pa.float64())})
    digests = row_digests(t, ["f"])
    assert len(set(digests)) == 4
    assert range_digest(digests) == range_digest(reversed(digests))
    assert row_digests(t, ["f"])[0] == row_digests(t, ["f"])[0]  # NaN equals itself here


def test_reads_are_paced_to_the_configured_rows_per_second() -> None:
    import threading
    from typing import Any, cast

    from cdc_replicator.config import VerifyConfig
    from cdc_replicator.engine.verify import Verifier

    slept: list[float] = []
    v = Verifier(
        reader=cast(Any, None),
        sink=cast(Any, None),
        settings=VerifyConfig(max_rows_per_second=1000),
        slot="s",
        stop=threading.Event(),
        sleep=slept.append,
    )
    for _ in range(3):
        v._pace(500)
    # each pause makes up what the reads so far are ahead of 1000 rows/s (this sleep does not pass time)
    assert [round(x, 1) for x in slept] == [0.5, 1.0, 1.5]
    unlimited: list[float] = []
    Verifier(
        reader=cast(Any, None),
        sink=cast(Any, None),
        settings=VerifyConfig(max_rows_per_second=0),
        slot="s",
        stop=threading.Event(),
        sleep=unlimited.append,
    )._pace(10**9)
    assert unlimited == []
