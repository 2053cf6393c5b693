-- 0001_init: where each slot stands (what was applied, initial load progress) and per-table status.
-- The authoritative per-table positions live in the Delta commits; this store records the one
-- thing Delta cannot: the position the replicator confirmed as fully applied across all tables.

create table if not exists cdc_source_position (
    slot text not null primary key,
    system_id text,
    load_state text not null,          -- 'loading' while an initial load runs, then 'done'
    consistent_point text,             -- where the slot's exported snapshot was taken
    applied_lsn text,                  -- every source transaction ending at or before it is in Delta
    updated_at text not null
);

create table if not exists cdc_table_status (
    slot text not null,
    table_name text not null,
    state text not null,               -- loading / streaming / failed
    position text,
    rows_loaded bigint,
    last_error text,
    updated_at text not null,
    primary key (slot, table_name)
);
