"""The pgoutput decoder, specified on messages captured from a real PostgreSQL 15 server."""

from __future__ import annotations

import dataclasses
import random
import struct
from datetime import datetime

import pytest

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import UNCHANGED, pg_time_to_datetime
from cdc_replicator.source import wire
from cdc_replicator.source.pgoutput import parse
from cdc_replicator.source.wire import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)
from tests.unit import pgoutput_captures as cap

ITEMS_OID = 16395  # inv.items
FULL_ROWS_OID = 16402  # public.full_rows
DOCS_OID = 16407  # public.docs
BIG_OID = 16414  # public.big
MOOD_OID = 16385  # enum public.mood
POSINT_OID = 16392  # domain posint over int4
INT4_OID, TEXT_OID = 23, 25

# (name, payload, in_stream) for every captured message.
OUTSIDE = [
    (name, value, False)
    for name, value in vars(cap).items()
    if name.isupper() and isinstance(value, bytes) and not name.startswith("STREAM")
]
INSIDE = [
    ("STREAM_DOCS_RELATION", cap.STREAM_DOCS_RELATION, True),
    ("STREAM_TYPE_ENUM_MOOD", cap.STREAM_TYPE_ENUM_MOOD, True),
    ("STREAM_RELATION_ITEMS", cap.STREAM_RELATION_ITEMS, True),
    ("STREAM_INSERT_KIWI", cap.STREAM_INSERT_KIWI, True),
    ("STREAM_INSERT_IN_SAVEPOINT", cap.STREAM_INSERT_IN_SAVEPOINT, True),
    ("STREAM_UPDATE_AFTER_SAVEPOINT", cap.STREAM_UPDATE_AFTER_SAVEPOINT, True),
    ("STREAM_MESSAGE", cap.STREAM_MESSAGE, True),
    ("STREAM_DELETE", cap.STREAM_DELETE, True),
    ("STREAM_TRUNCATE", cap.STREAM_TRUNCATE, True),
]
STREAM_CONTROL = [
    (name, getattr(cap, name), False)
    for name in (
        "STREAM_DOCS_START_FIRST",
        "STREAM_DOCS_STOP",
        "STREAM_DOCS_COMMIT",
        "STREAM_START_FIRST",
        "STREAM_STOP",
        "STREAM_START_NEXT",
        "STREAM_ABORT_SUBTRANSACTION",
        "STREAM_COMMIT",
        "STREAM_ABORT_TRANSACTION",
    )
]
ALL = OUTSIDE + INSIDE + STREAM_CONTROL
IDS = [c[0] for c in ALL]


def test_fixture_tables_cover_every_capture() -> None:
    captured = {name for name in dir(cap) if name.isupper() and isinstance(getattr(cap, name), bytes)}
    assert captured == set(IDS)


# ---- transactions ---------------------------------------------------------------------------


def test_begin_carries_final_lsn_commit_time_and_xid() -> None:
    msg = parse(cap.BEGIN)
    assert isinstance(msg, Begin)
    assert (msg.final_lsn, msg.xid) == (0x153D848, 734)
    assert pg_time_to_datetime(msg.commit_time) > datetime.fromisoformat("2024-01-01T00:00:00+00:00")


def test_commit_pairs_with_begin_and_ends_after_its_commit_lsn() -> None:
    begin, commit = parse(cap.BEGIN), parse(cap.COMMIT)
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert commit.flags == 0
    assert commit.commit_lsn == begin.final_lsn == 0x153D848
    assert commit.end_lsn == 0x153D878 > commit.commit_lsn
    assert commit.commit_time == begin.commit_time


def test_origin_carries_the_upstream_commit_lsn_and_origin_name() -> None:
    assert parse(cap.ORIGIN_UPSTREAM) == Origin(commit_lsn=0xABCDEF, name="upstream")


# ---- schema ---------------------------------------------------------------------------------


def test_relation_lists_columns_with_types_and_key_flags() -> None:
    msg = parse(cap.RELATION_ITEMS)
    assert isinstance(msg, Relation)
    assert (msg.xid, msg.relation_id, msg.namespace, msg.name) == (None, ITEMS_OID, "inv", "items")
    assert msg.replica_identity == "d"
    assert [(c.name, c.type_oid, c.type_modifier, c.is_key) for c in msg.columns] == [
        ("id", INT4_OID, -1, True),
        ("name", TEXT_OID, -1, False),
        ("qty", POSINT_OID, -1, False),
        ("status", MOOD_OID, -1, False),
        ("note", TEXT_OID, -1, False),
    ]


def test_relation_with_replica_identity_full_flags_every_column_as_key() -> None:
    msg = parse(cap.RELATION_FULL_ROWS)
    assert isinstance(msg, Relation)
    assert (msg.namespace, msg.name, msg.replica_identity) == ("public", "full_rows", "f")
    assert [(c.name, c.flags, c.is_key) for c in msg.columns] == [("id", 1, True), ("v", 1, True)]


def test_type_of_an_enum_names_its_schema_and_name() -> None:
    assert parse(cap.TYPE_ENUM_MOOD) == Type(xid=None, type_oid=MOOD_OID, namespace="public", name="mood")


def test_type_of_a_domain_names_its_base_type_with_empty_namespace_for_pg_catalog() -> None:
    assert parse(cap.TYPE_DOMAIN_POSINT) == Type(xid=None, type_oid=POSINT_OID, namespace="", name="int4")


# ---- row changes ----------------------------------------------------------------------------


def test_insert_carries_text_values_in_column_order() -> None:
    assert parse(cap.INSERT_APPLE) == Insert(
        xid=None, relation_id=ITEMS_OID, new=(b"1", b"apple", b"3", b"happy", b"fresh")
    )


def test_insert_null_columns_decode_as_none() -> None:
    msg = parse(cap.INSERT_PEAR_WITH_NULLS)
    assert isinstance(msg, Insert)
    assert msg.new == (b"2", b"pear", None, None, None)


def test_insert_in_binary_mode_keeps_the_raw_send_bytes() -> None:
    msg = parse(cap.INSERT_APPLE_BINARY)
    assert isinstance(msg, Insert)
    assert msg.new == (struct.pack("!i", 1), b"apple", struct.pack("!i", 3), b"happy", b"fresh")


def test_update_that_keeps_the_key_has_no_old_tuple() -> None:
    assert parse(cap.UPDATE_WITHOUT_OLD) == Update(
        xid=None,
        relation_id=ITEMS_OID,
        old_kind=None,
        old=None,
        new=(b"1", b"apple", b"5", b"happy", b"ripe"),
    )


def test_update_with_old_key_carries_key_tuple() -> None:
    msg = parse(cap.UPDATE_CHANGING_KEY)
    assert isinstance(msg, Update)
    assert msg.old_kind == "K"
    assert msg.old == (b"2", None, None, None, None)
    assert msg.new == (b"20", b"pear", None, None, None)


def test_update_with_replica_identity_full_carries_the_whole_old_row() -> None:
    msg = parse(cap.UPDATE_FULL_IDENTITY)
    assert isinstance(msg, Update)
    assert (msg.relation_id, msg.old_kind, msg.old, msg.new) == (
        FULL_ROWS_OID,
        "O",
        (b"1", b"one"),
        (b"1", b"uno"),
    )


def test_update_leaving_a_toasted_column_alone_marks_it_unchanged() -> None:
    msg = parse(cap.UPDATE_UNCHANGED_TOAST)
    assert isinstance(msg, Update)
    assert msg.relation_id == DOCS_OID
    assert msg.new == (b"1", b"renamed", UNCHANGED)
    assert msg.new[2] is UNCHANGED


def test_delete_by_key_carries_the_key_and_nulls_elsewhere() -> None:
    assert parse(cap.DELETE_BY_KEY) == Delete(
        xid=None, relation_id=ITEMS_OID, old_kind="K", old=(b"20", None, None, None, None)
    )


def test_delete_with_replica_identity_full_carries_the_whole_old_row() -> None:
    assert parse(cap.DELETE_FULL_IDENTITY) == Delete(
        xid=None, relation_id=FULL_ROWS_OID, old_kind="O", old=(b"2", None)
    )


def test_truncate_lists_its_relations_and_cascade_restart_identity_options() -> None:
    msg = parse(cap.TRUNCATE_TWO_CASCADE_RESTART)
    assert msg == Truncate(xid=None, options=3, relation_ids=(ITEMS_OID, FULL_ROWS_OID))
    assert msg.cascade and msg.restart_identity


def test_truncate_of_one_table_has_no_options() -> None:
    msg = parse(cap.TRUNCATE_ONE)
    assert msg == Truncate(xid=None, options=0, relation_ids=(DOCS_OID,))
    assert not msg.cascade and not msg.restart_identity


# ---- logical messages -----------------------------------------------------------------------


def test_transactional_logical_message_carries_prefix_content_and_lsn() -> None:
    msg = parse(cap.MESSAGE_TRANSACTIONAL)
    assert isinstance(msg, LogicalMessage)
    assert (msg.xid, msg.flags, msg.transactional) == (None, 1, True)
    assert (msg.prefix, msg.content) == ("cdc", b"hello transactional")
    assert msg.lsn == 0x1558AA8


def test_non_transactional_logical_message_has_no_flags_and_keeps_binary_content() -> None:
    msg = parse(cap.MESSAGE_NON_TRANSACTIONAL)
    assert msg == LogicalMessage(xid=None, flags=0, lsn=0x1558B18, prefix="cdc", content=b"\x00\xff\x01")
    assert not msg.transactional


# ---- streaming (protocol 2) -----------------------------------------------------------------


def test_stream_start_marks_the_first_segment_of_a_transaction() -> None:
    assert parse(cap.STREAM_START_FIRST) == StreamStart(xid=cap.STREAMED_XID, first_segment=True)
    assert parse(cap.STREAM_START_NEXT) == StreamStart(xid=cap.STREAMED_XID, first_segment=False)


def test_stream_stop_is_a_bare_tag() -> None:
    assert parse(cap.STREAM_STOP) == StreamStop()
    assert cap.STREAM_STOP == b"E"


def test_in_stream_relation_and_type_carry_the_xid_before_their_fields() -> None:
    rel = parse(cap.STREAM_RELATION_ITEMS, in_stream=True)
    assert isinstance(rel, Relation)
    assert (rel.xid, rel.relation_id, rel.namespace, rel.name) == (
        cap.STREAMED_XID,
        ITEMS_OID,
        "inv",
        "items",
    )
    assert dataclasses.replace(rel, xid=None) == parse(cap.RELATION_ITEMS)
    typ = parse(cap.STREAM_TYPE_ENUM_MOOD, in_stream=True)
    assert typ == Type(xid=cap.STREAMED_XID, type_oid=MOOD_OID, namespace="public", name="mood")


def test_in_stream_insert_carries_the_xid_before_the_relation_id() -> None:
    assert parse(cap.STREAM_INSERT_KIWI, in_stream=True) == Insert(
        xid=cap.STREAMED_XID, relation_id=ITEMS_OID, new=(b"8", b"kiwi", b"2", b"sad", b"in stream")
    )


def test_in_stream_changes_inside_a_savepoint_carry_the_subtransaction_xid() -> None:
    ins = parse(cap.STREAM_INSERT_IN_SAVEPOINT, in_stream=True)
    assert isinstance(ins, Insert)
    assert (ins.xid, ins.relation_id, ins.new) == (cap.SAVEPOINT_XID, BIG_OID, (b"3001", b"y" * 40))
    upd = parse(cap.STREAM_UPDATE_AFTER_SAVEPOINT, in_stream=True)
    assert isinstance(upd, Update)
    assert (upd.xid, upd.old_kind, upd.new[4]) == (cap.AFTER_SAVEPOINT_XID, None, b"streamed update")
    assert parse(cap.STREAM_DELETE, in_stream=True) == Delete(
        xid=cap.AFTER_SAVEPOINT_XID, relation_id=ITEMS_OID, old_kind="K", old=(b"8", None, None, None, None)
    )
    assert parse(cap.STREAM_TRUNCATE, in_stream=True) == Truncate(
        xid=cap.AFTER_SAVEPOINT_XID, options=0, relation_ids=(FULL_ROWS_OID,)
    )


def test_in_stream_logical_message_carries_the_top_level_xid() -> None:
    msg = parse(cap.STREAM_MESSAGE, in_stream=True)
    assert isinstance(msg, LogicalMessage)
    assert (msg.xid, msg.flags, msg.prefix, msg.content) == (cap.STREAMED_XID, 1, "cdc", b"in stream")


def test_stream_commit_carries_xid_and_commit_and_end_lsns() -> None:
    msg = parse(cap.STREAM_COMMIT)
    assert isinstance(msg, StreamCommit)
    assert (msg.xid, msg.flags, msg.commit_lsn, msg.end_lsn) == (cap.STREAMED_XID, 0, 0x1655918, 0x1655A30)
    assert msg.end_lsn > msg.commit_lsn
    docs = parse(cap.STREAM_DOCS_COMMIT)
    assert isinstance(docs, StreamCommit)
    assert docs.xid == 740 and docs.end_lsn > docs.commit_lsn


def test_stream_abort_of_a_savepoint_names_the_transaction_and_the_subtransaction() -> None:
    assert parse(cap.STREAM_ABORT_SUBTRANSACTION) == StreamAbort(
        xid=cap.STREAMED_XID, subxid=cap.SAVEPOINT_XID
    )


def test_stream_abort_of_a_whole_transaction_repeats_the_xid() -> None:
    msg = parse(cap.STREAM_ABORT_TRANSACTION)
    assert msg == StreamAbort(xid=751, subxid=751, abort_lsn=None, abort_time=None)


def test_protocol_4_stream_abort_also_decodes_abort_lsn_and_time() -> None:
    payload = cap.STREAM_ABORT_TRANSACTION + struct.pack("!Qq", 0x16D28C0, 123_456_789)
    assert parse(payload) == StreamAbort(xid=751, subxid=751, abort_lsn=0x16D28C0, abort_time=123_456_789)


def test_every_truncation_of_a_protocol_4_stream_abort_raises_except_the_protocol_2_prefix() -> None:
    payload = cap.STREAM_ABORT_SUBTRANSACTION + struct.pack("!Qq", 0x1654FD8, 1)
    for cut in range(len(payload)):
        if cut == len(cap.STREAM_ABORT_SUBTRANSACTION):
            assert parse(payload[:cut]) == StreamAbort(xid=cap.STREAMED_XID, subxid=cap.SAVEPOINT_XID)
            continue
        with pytest.raises(DecodeError):
            parse(payload[:cut])


@pytest.mark.parametrize(
    ("name", "payload", "in_stream"),
    [*STREAM_CONTROL, ("BEGIN", cap.BEGIN, False), ("COMMIT", cap.COMMIT, False)],
    ids=[c[0] for c in STREAM_CONTROL] + ["BEGIN", "COMMIT"],
)
def test_messages_without_an_in_stream_xid_decode_the_same_inside_a_stream(
    name: str, payload: bytes, in_stream: bool
) -> None:
    assert parse(payload, in_stream=True) == parse(payload)


def test_origin_inside_a_stream_has_no_xid() -> None:
    assert parse(cap.ORIGIN_UPSTREAM, in_stream=True) == Origin(commit_lsn=0xABCDEF, name="upstream")


# ---- inputs ---------------------------------------------------------------------------------


def test_parse_accepts_bytes_and_memoryviews_alike() -> None:
    expected = parse(cap.UPDATE_CHANGING_KEY)
    assert parse(memoryview(cap.UPDATE_CHANGING_KEY)) == expected
    frame = b"w" + bytes(24) + cap.UPDATE_CHANGING_KEY  # an XLogData frame: header, then the message
    assert parse(memoryview(frame)[25:]) == expected
    assert parse(memoryview(bytearray(cap.UPDATE_CHANGING_KEY)).cast("c")) == expected  # type: ignore[arg-type]
    rel = parse(memoryview(frame)[25:])
    assert isinstance(rel, Update) and all(type(v) is bytes for v in rel.new if v is not None)


def test_values_decoded_from_a_memoryview_do_not_alias_the_buffer() -> None:
    buf = bytearray(cap.INSERT_APPLE)
    msg = parse(memoryview(buf))
    buf[:] = bytes(len(buf))
    assert isinstance(msg, Insert) and msg.new[1] == b"apple"


def test_messages_are_frozen_values() -> None:
    msg = parse(cap.BEGIN)
    assert isinstance(msg, Begin)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.xid = 1  # type: ignore[misc]


def test_message_tags_name_every_decodable_tag() -> None:
    assert {chr(t) for t in wire.MessageTag} == set("BCORYIUDTMSEcA")


# ---- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "payload", "in_stream"), ALL, ids=IDS)
def test_every_truncation_of_a_captured_message_raises_decode_error(
    name: str, payload: bytes, in_stream: bool
) -> None:
    parse(payload, in_stream=in_stream)  # the whole message is fine
    for cut in range(len(payload)):
        with pytest.raises(DecodeError) as err:
            parse(payload[:cut], in_stream=in_stream)
        assert 0 <= err.value.offset <= cut, (cut, str(err.value))


@pytest.mark.parametrize(("name", "payload", "in_stream"), ALL, ids=IDS)
def test_trailing_bytes_after_a_complete_message_raise_decode_error(
    name: str, payload: bytes, in_stream: bool
) -> None:
    with pytest.raises(DecodeError, match="trailing") as err:
        parse(payload + b"\x00", in_stream=in_stream)
    assert err.value.offset == len(payload)


def test_truncated_fixed_field_error_names_the_field_and_its_offset() -> None:
    with pytest.raises(DecodeError, match=r"truncated Int64 \(Commit end_lsn\) at byte 10"):
        parse(cap.COMMIT[:12])


def test_unknown_tag_raises_decode_error_naming_the_tag() -> None:
    with pytest.raises(DecodeError, match=r"unknown pgoutput message tag 0x5a \('Z'\) at byte 0"):
        parse(b"Z\x00\x00")


def test_two_phase_tags_are_reported_as_unsupported() -> None:
    with pytest.raises(DecodeError, match="Begin Prepare") as err:
        parse(b"b" + bytes(40))
    assert "two_phase" in err.value.hint


def test_empty_payload_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="empty"):
        parse(b"")


def test_unknown_tuple_column_kind_raises_with_its_offset() -> None:
    bad = bytearray(cap.INSERT_APPLE)
    assert bad[8] == ord("t")  # tag, relation id, 'N', column count, then the first column kind
    bad[8] = ord("x")
    with pytest.raises(DecodeError, match=r"unknown tuple column kind 0x78 \('x'\) at byte 8"):
        parse(bytes(bad))


def test_string_without_nul_terminator_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="Type name: string has no NUL terminator"):
        parse(cap.TYPE_ENUM_MOOD[:-1])


def test_string_that_is_not_utf8_raises_decode_error() -> None:
    bad = cap.TYPE_ENUM_MOOD.replace(b"mood", b"m\xffod")
    with pytest.raises(DecodeError, match="not valid UTF-8 at byte 13"):
        parse(bad)


def test_update_whose_old_and_new_tuples_differ_in_width_raises_column_count_mismatch() -> None:
    bad = b"U" + struct.pack("!I", ITEMS_OID) + b"K\x00\x01n" + b"N\x00\x02nn"
    with pytest.raises(DecodeError, match="column count mismatch"):
        parse(bad)


def test_insert_without_new_tuple_marker_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="expected new-tuple marker 'N'"):
        parse(cap.INSERT_APPLE[:5] + b"K" + cap.INSERT_APPLE[6:])


def test_negative_value_length_raises_decode_error() -> None:
    bad = b"I" + struct.pack("!I", ITEMS_OID) + b"N\x00\x01t" + struct.pack("!i", -1)
    with pytest.raises(DecodeError, match="-1 bytes overruns"):
        parse(bad)


def test_unknown_replica_identity_raises_decode_error() -> None:
    bad = cap.RELATION_FULL_ROWS.replace(b"full_rows\x00f", b"full_rows\x00z")
    with pytest.raises(DecodeError, match="replica identity 'z'"):
        parse(bad)


def test_in_stream_change_read_as_outside_a_stream_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        parse(cap.STREAM_INSERT_KIWI, in_stream=False)


def test_random_corruption_raises_nothing_but_decode_error() -> None:
    rng = random.Random(20240601)
    for _name, payload, in_stream in ALL:
        for _ in range(300):
            bad = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            try:
                parse(bytes(bad), in_stream=in_stream)
            except DecodeError:
                pass
