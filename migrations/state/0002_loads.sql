-- 0002_loads: chunked table loads (cdc-replicator snapshot), so a load cut short resumes where it was.
-- A chunk is written to Delta as one idempotent range overwrite; 'done' here means it was committed.

create table if not exists cdc_load (
    slot text not null,
    table_name text not null,
    load_id text not null,
    position text not null,            -- the table's position once every chunk is in
    state text not null,               -- running / done / failed
    chunks integer not null,
    started_at text not null,
    updated_at text not null,
    primary key (slot, table_name)
);

create table if not exists cdc_load_chunk (
    slot text not null,
    table_name text not null,
    load_id text not null,
    chunk_no integer not null,
    bounds text not null,              -- JSON: {"lo": [...]|null, "hi": [...]|null, "pages": [a, b]|null}
    state text not null,               -- pending / done
    rows bigint,
    snapshot_lsn text,                 -- the snapshot the chunk was read in (its rows' _cdc_lsn)
    updated_at text not null,
    primary key (slot, table_name, chunk_no)
);
