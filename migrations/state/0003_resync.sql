-- 0003_resync: live re-syncs the daemon runs (DBLog-style watermarks), so a restart continues them.
-- Progress is written only after the chunk it covers is committed to Delta.

create table if not exists cdc_resync (
    slot text not null,
    table_name text not null,
    request text not null,             -- id of the request (as sent in the stream)
    low_watermark text,                -- commit LSN of the first chunk's low watermark
    next_key text,                     -- JSON: key (text forms) after which the next chunk starts, or pages
    chunks integer not null,
    rows bigint not null,
    state text not null,               -- running / done / failed
    detail text,
    updated_at text not null,
    primary key (slot, table_name)
);
