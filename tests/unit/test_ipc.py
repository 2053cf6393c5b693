"""Specification of the reader → caller codec: events cross the pipe as tuples and come back equal."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from cdc_replicator.model import (
    UNCHANGED,
    Begin,
    Commit,
    Keepalive,
    Lsn,
    Op,
    RowChange,
    SourceEvent,
    SourceMessage,
    TableId,
    Truncate,
)
from cdc_replicator.source.ipc import decode_events, encode_events

ORDERS = TableId("public", "orders")
AT = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

TRANSACTION: list[SourceEvent] = [
    Begin(731, Lsn.parse("16/B374D848"), AT),
    RowChange(ORDERS, Op.INSERT, (b"1", None, b"apple"), None, 1),
    RowChange(ORDERS, Op.UPDATE, (b"1", UNCHANGED, b"pear"), (b"1", None, None), 2),
    RowChange(ORDERS, Op.DELETE, None, (b"1", None, None), 3),
    Truncate((ORDERS,), 4),
    SourceMessage(b"\x00\xff", True),
    Commit(Lsn.parse("16/B374D848"), Lsn.parse("16/B374D878"), AT),
    Keepalive(Lsn(2**64 - 1)),
]


def test_a_chunk_comes_back_equal_in_order_through_a_pickle() -> None:
    back = decode_events(pickle.loads(pickle.dumps(encode_events(TRANSACTION))))

    assert back == TRANSACTION
    assert [type(e) for e in back] == [type(e) for e in TRANSACTION]


def test_row_changes_begins_and_commits_cross_as_tuples_and_the_rare_kinds_as_they_are() -> None:
    encoded = encode_events(TRANSACTION)

    assert [type(x) is tuple for x in encoded] == [True, True, True, True, False, False, True, False]


def test_an_empty_chunk_stays_empty() -> None:
    assert decode_events(encode_events([])) == []
