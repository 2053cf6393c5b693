"""pgoutput messages captured from PostgreSQL 15.18, as hex, for the decoder tests.

Captured once with ``pg_logical_slot_peek_binary_changes('slot', null, null, 'proto_version', '1',
'publication_names', 'pub', 'messages', 'true')`` (plus ``'binary', 'true'`` for INSERT_APPLE_BINARY, and
``'proto_version', '2', 'streaming', 'on'`` for the STREAM_* messages) on a server started with
``wal_level=logical logical_decoding_work_mem=64kB``. The SQL that produced each message is in its comment.
"""

from __future__ import annotations

# begin; insert into inv.items ... (two rows); commit;  -- xid 734
BEGIN = bytes.fromhex("42000000000153d848000303c1ef2fb956000002de")
# domain posint over int4: the domain's OID, its base type's name, namespace "" (pg_catalog)
TYPE_DOMAIN_POSINT = bytes.fromhex("590000400800696e743400")
# enum public.mood
TYPE_ENUM_MOOD = bytes.fromhex("59000040017075626c6963006d6f6f6400")
# inv.items (id int primary key, name text not null, qty posint, status mood, note text)
RELATION_ITEMS = bytes.fromhex(
    "520000400b696e76006974656d73006400050169640000000017ffffffff006e616d650000000019ffffffff007174790000"
    "004008ffffffff007374617475730000004001ffffffff006e6f74650000000019ffffffff"
)
# insert into inv.items values (1, 'apple', 3, 'happy', 'fresh')
INSERT_APPLE = bytes.fromhex(
    "490000400b4e000574000000013174000000056170706c657400000001337400000005686170707974000000056672657368"
)
# insert into inv.items values (2, 'pear', null, null, null)
INSERT_PEAR_WITH_NULLS = bytes.fromhex("490000400b4e00057400000001327400000004706561726e6e6e")
# commit of xid 734 (pairs with BEGIN)
COMMIT = bytes.fromhex("4300000000000153d848000000000153d878000303c1ef2fb956")
# update inv.items set qty = 5, note = 'ripe' where id = 1
UPDATE_WITHOUT_OLD = bytes.fromhex(
    "550000400b4e000574000000013174000000056170706c6574000000013574000000056861707079740000000472697065"
)
# update inv.items set id = 20 where id = 2
UPDATE_CHANGING_KEY = bytes.fromhex(
    "550000400b4b00057400000001326e6e6e6e4e0005740000000232307400000004706561726e6e6e"
)
# public.full_rows (id int, v text) replica identity full
RELATION_FULL_ROWS = bytes.fromhex(
    "52000040127075626c69630066756c6c5f726f7773006600020169640000000017ffffffff01760000000019ffffffff"
)
# update public.full_rows set v = 'uno' where id = 1
UPDATE_FULL_IDENTITY = bytes.fromhex(
    "55000040124f000274000000013174000000036f6e654e00027400000001317400000003756e6f"
)
# delete from public.full_rows where id = 2  -- row (2, null)
DELETE_FULL_IDENTITY = bytes.fromhex("44000040124f00027400000001326e")
# public.docs (id int primary key, title text, body text), body storage external
RELATION_DOCS = bytes.fromhex(
    "52000040177075626c696300646f6373006400030169640000000017ffffffff007469746c650000000019ffffffff00626f"
    "64790000000019ffffffff"
)
# update public.docs set title = 'renamed' where id = 1  -- body: 100 kB, toasted
UPDATE_UNCHANGED_TOAST = bytes.fromhex("55000040174e0003740000000131740000000772656e616d656475")
# delete from inv.items where id = 20
DELETE_BY_KEY = bytes.fromhex("440000400b4b0005740000000232306e6e6e6e")
# select pg_logical_emit_message(true, 'cdc', 'hello transactional')
MESSAGE_TRANSACTIONAL = bytes.fromhex(
    "4d010000000001558aa8636463000000001368656c6c6f207472616e73616374696f6e616c"
)
# select pg_logical_emit_message(false, 'cdc', '\x00ff01'::bytea)  -- no Begin/Commit
MESSAGE_NON_TRANSACTIONAL = bytes.fromhex("4d000000000001558b18636463000000000300ff01")
# truncate inv.items, public.full_rows restart identity cascade
TRUNCATE_TWO_CASCADE_RESTART = bytes.fromhex("5400000002030000400b00004012")
# truncate public.docs
TRUNCATE_ONE = bytes.fromhex("54000000010000004017")
# pg_replication_origin_session_setup('upstream'); pg_replication_origin_xact_setup('0/ABCDEF', now())
ORIGIN_UPSTREAM = bytes.fromhex("4f0000000000abcdef757073747265616d00")
# INSERT_APPLE decoded with 'binary' 'true': every column is 'b' (int4send etc.)
INSERT_APPLE_BINARY = bytes.fromhex(
    "490000400b4e000562000000040000000162000000056170706c656200000004000000036200000005686170707962000000"
    "056672657368"
)
# xid 740 (the 100 kB docs insert) streamed: first segment
STREAM_DOCS_START_FIRST = bytes.fromhex("53000002e401")
# Relation inside that stream: carries xid 740
STREAM_DOCS_RELATION = bytes.fromhex(
    "52000002e4000040177075626c696300646f6373006400030169640000000017ffffffff007469746c650000000019ffffff"
    "ff00626f64790000000019ffffffff"
)
# end of that stream block
STREAM_DOCS_STOP = bytes.fromhex("45")
# Stream Commit of xid 740
STREAM_DOCS_COMMIT = bytes.fromhex("63000002e40000000000015588f00000000001558920000303c1ef2fdad9")
# big transaction, xid 748: first segment
STREAM_START_FIRST = bytes.fromhex("53000002ec01")
# Type inside the stream (xid 748)
STREAM_TYPE_ENUM_MOOD = bytes.fromhex("59000002ec000040017075626c6963006d6f6f6400")
# Relation inside the stream (xid 748)
STREAM_RELATION_ITEMS = bytes.fromhex(
    "52000002ec0000400b696e76006974656d73006400050169640000000017ffffffff006e616d650000000019ffffffff0071"
    "74790000004008ffffffff007374617475730000004001ffffffff006e6f74650000000019ffffffff"
)
# insert into inv.items values (8, 'kiwi', 2, 'sad', 'in stream')  -- first change of xid 748
STREAM_INSERT_KIWI = bytes.fromhex(
    "49000002ec0000400b4e000574000000013874000000046b69776974000000013274000000037361647400000009696e2073"
    "747265616d"
)
# savepoint s1; insert into public.big ... (3001, 'yyyy...')  -- subxid 749
STREAM_INSERT_IN_SAVEPOINT = bytes.fromhex(
    "49000002ed0000401e4e00027400000004333030317400000028797979797979797979797979797979797979797979797979"
    "79797979797979797979797979797979"
)
# end of a stream block
STREAM_STOP = bytes.fromhex("45")
# a later segment of xid 748
STREAM_START_NEXT = bytes.fromhex("53000002ec00")
# rollback to savepoint s1 after its rows were streamed: xid 748, subxid 749
STREAM_ABORT_SUBTRANSACTION = bytes.fromhex("41000002ec000002ed")
# update inv.items set note = 'streamed update' where id = 8  -- new subxid 750
STREAM_UPDATE_AFTER_SAVEPOINT = bytes.fromhex(
    "55000002ee0000400b4e000574000000013874000000046b6977697400000001327400000003736164740000000f73747265"
    "616d656420757064617465"
)
# select pg_logical_emit_message(true, 'cdc', 'in stream')  -- carries top-level xid 748
STREAM_MESSAGE = bytes.fromhex("4d000002ec0100000000016550886364630000000009696e2073747265616d")
# delete from inv.items where id = 8  -- subxid 750
STREAM_DELETE = bytes.fromhex("44000002ee0000400b4b00057400000001386e6e6e6e")
# truncate public.full_rows  -- subxid 750
STREAM_TRUNCATE = bytes.fromhex("54000002ee000000010000004012")
# commit of xid 748
STREAM_COMMIT = bytes.fromhex("63000002ec0000000000016559180000000001655a30000303c1ef301976")
# begin; insert 3000 rows; rollback;  -- xid 751 = subxid 751
STREAM_ABORT_TRANSACTION = bytes.fromhex("41000002ef000002ef")

STREAMED_XID = 748  # the top-level xid of the big streamed transaction
SAVEPOINT_XID = 749  # the subtransaction rolled back to savepoint s1
AFTER_SAVEPOINT_XID = 750  # the subtransaction opened again by the rollback to s1
