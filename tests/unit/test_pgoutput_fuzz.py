"""Any bytes given to the pgoutput decoder give messages or a DecodeError with its offset: never another error, never a hang.

Hypothesis feeds ``pgoutput.parse`` random payloads and mutations of the real captured messages of
``pgoutput_captures`` (bytes flipped, cut short, inserted, length and count fields overwritten with
huge values), then hands what parses to a ``Decoder`` that knows the captured relations, as the
stream does. Reproducible in CI: derandomized, 2000 examples per test and a deadline per example;
``CDC_FUZZ_EXAMPLES=200000`` runs a longer, random search (locally). Each crash found is kept below
as a plain regression example.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_replicator.errors import DecodeError
from cdc_replicator.model import TableId
from cdc_replicator.source import wire
from cdc_replicator.source.decoding import Decoder
from cdc_replicator.source.pgoutput import parse
from tests.unit import pgoutput_captures as cap

LONG_RUN = os.environ.get("CDC_FUZZ_EXAMPLES")  # e.g. 200000: a longer, random search (locally)
FUZZ = settings(
    max_examples=int(LONG_RUN or 2000),
    derandomize=LONG_RUN is None,  # in CI the same examples on every run: reproducible
    database=None,
    # a message takes microseconds; the deadline is loose so that a loaded CI machine's stall is no failure
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow],
)

CAPTURES: tuple[tuple[bytes, bool], ...] = tuple(
    (value, name.startswith("STREAM_") and name not in _OUTSIDE)
    for _OUTSIDE in [
        {
            "STREAM_DOCS_START_FIRST",
            "STREAM_DOCS_STOP",
            "STREAM_DOCS_COMMIT",
            "STREAM_START_FIRST",
            "STREAM_STOP",
            "STREAM_START_NEXT",
            "STREAM_ABORT_SUBTRANSACTION",
            "STREAM_COMMIT",
            "STREAM_ABORT_TRANSACTION",
        }
    ]
    for name, value in sorted(vars(cap).items())
    if name.isupper() and isinstance(value, bytes)
)  # (payload, whether it is sent inside a stream: it then carries an xid after the tag)
KEYS = {
    TableId("inv", "items"): ("id",),
    TableId("public", "full_rows"): ("id",),
    TableId("public", "docs"): ("id",),
}
HUGE = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x7FFFFFF0, 0xFFFF)


def _decoder() -> Decoder:
    """A decoder that has seen the captured Relation messages, as it would in a stream."""
    dec = Decoder(KEYS)
    for payload in (cap.RELATION_ITEMS, cap.RELATION_FULL_ROWS, cap.RELATION_DOCS):
        dec.decode(parse(payload))
    return dec


def _survives(payload: bytes, in_stream: bool) -> None:
    """The contract: a message (which the decoder turns into events) or a DecodeError at an offset inside it."""
    try:
        msg = parse(payload, in_stream=in_stream)
    except DecodeError as exc:
        assert 0 <= exc.offset <= len(payload), f"offset {exc.offset} outside {len(payload)} bytes"
        return
    assert isinstance(
        msg,
        wire.Begin
        | wire.Commit
        | wire.Origin
        | wire.Relation
        | wire.Type
        | wire.Insert
        | wire.Update
        | wire.Delete
        | wire.Truncate
        | wire.LogicalMessage
        | wire.StreamStart
        | wire.StreamStop
        | wire.StreamCommit
        | wire.StreamAbort,
    )
    try:
        _decoder().decode(msg)
    except DecodeError:
        pass


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A captured message with a few random edits."""
    payload, in_stream = draw(st.sampled_from(CAPTURES))
    buf = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "huge", "byte"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        elif kind == "huge" and len(buf) >= at + 4:
            buf[at : at + 4] = struct.pack("!I", draw(st.sampled_from(HUGE)))
        elif kind == "byte" and buf:
            buf[at] = draw(st.sampled_from(b"tbnuNKOBCRYIUDTMSEcA\x00\xff"))
    return bytes(buf), draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else in_stream


@FUZZ
@given(payload=st.binary(max_size=200), in_stream=st.booleans())
def test_random_bytes_give_a_message_or_a_decode_error_with_its_offset(
    payload: bytes, in_stream: bool
) -> None:
    _survives(payload, in_stream)


@FUZZ
@given(tag=st.sampled_from(sorted(wire.MessageTag)), body=st.binary(max_size=120), in_stream=st.booleans())
def test_random_bodies_behind_every_known_tag_give_a_message_or_a_decode_error(
    tag: int, body: bytes, in_stream: bool
) -> None:
    _survives(bytes([tag]) + body, in_stream)


@FUZZ
@given(case=mutated())
def test_mutated_captured_messages_give_a_message_or_a_decode_error(case: tuple[bytes, bool]) -> None:
    _survives(*case)


# ---- lengths and counts that claim far more than the message holds: no allocation, no loop -------


@pytest.mark.parametrize(
    "payload",
    [
        # Insert whose one text column claims 2 GiB
        b"I"
        + struct.pack("!I", 0x400B)
        + b"N"
        + struct.pack("!H", 1)
        + b"t"
        + struct.pack("!i", 0x7FFFFFFF)
        + b"x",
        # ... and a negative length
        b"I" + struct.pack("!I", 0x400B) + b"N" + struct.pack("!H", 1) + b"t" + struct.pack("!i", -1),
        # a tuple claiming 65535 columns with none there
        b"I" + struct.pack("!I", 0x400B) + b"N" + struct.pack("!H", 0xFFFF),
        # Truncate of 2^31 - 1 relations
        b"T" + struct.pack("!iB", 0x7FFFFFFF, 0) + b"\x00" * 8,
        # Truncate of a negative count
        b"T" + struct.pack("!iB", -2, 0),
        # a logical message whose content claims 2 GiB
        b"M\x01" + struct.pack("!Q", 1) + b"p\x00" + struct.pack("!i", 0x7FFFFFFF) + b"abc",
        # a Relation claiming 65535 columns
        b"R" + struct.pack("!I", 1) + b"public\x00t\x00d" + struct.pack("!H", 0xFFFF),
    ],
    ids=[
        "column-2gib",
        "column-negative",
        "tuple-65535",
        "truncate-2g",
        "truncate-negative",
        "message-2gib",
        "relation-65535",
    ],
)
def test_a_length_or_count_larger_than_the_message_is_a_decode_error_at_once(payload: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as info:
            parse(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"decoding {len(payload)} bytes allocated {peak} bytes"
    assert 0 <= info.value.offset <= len(payload)


# ---- what the fuzzing found, kept as plain examples ---------------------------------------------

# A Commit whose commit_time (bytes 18-25) is 2^57 microseconds: ~8000 years past 2000, so the
# decoder's datetime overflowed (OverflowError, not a DecodeError). Begin, Stream Commit and a
# protocol 4 Stream Abort carry the same field.
_FAR_FUTURE = struct.pack("!q", 0x0381000000000000)


@pytest.mark.parametrize(
    ("payload", "offset"),
    [
        (b"C\x00" + b"\x00" * 16 + _FAR_FUTURE, 18),
        (b"B" + b"\x00" * 8 + _FAR_FUTURE + b"\x00\x00\x00\x01", 9),
        (b"c\x00\x00\x00\x01\x00" + b"\x00" * 16 + _FAR_FUTURE, 22),
        (b"A\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x00" * 8 + struct.pack("!q", -(2**62)), 17),
    ],
    ids=["commit", "begin", "stream-commit", "stream-abort"],
)
def test_a_commit_time_no_datetime_can_hold_is_a_decode_error_at_its_offset(
    payload: bytes, offset: int
) -> None:
    with pytest.raises(DecodeError) as info:
        parse(payload)
    assert info.value.offset == offset and "outside the years 1 to 9999" in info.value.message


def test_a_row_with_more_or_fewer_columns_than_its_relation_is_a_decode_error() -> None:
    """Found reading what the fuzzing fed the decoder: a cut tuple parsed, and its row went on short."""
    dec = _decoder()
    short = parse(b"I" + struct.pack("!I", 0x400B) + b"N" + struct.pack("!H", 1) + b"n")
    with pytest.raises(DecodeError, match="inv.items has 1 columns, its Relation message 5"):
        dec.decode(short)
    assert dec.decode(parse(cap.INSERT_APPLE))  # the real one still decodes
