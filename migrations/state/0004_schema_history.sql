-- 0004_schema_history: every layout a table had and every contract decision taken on it.
-- The last row of a table is the layout its Delta table holds (what the stream is compared with).

create table if not exists cdc_schema_history (
    slot text not null,
    table_name text not null,
    version integer not null,          -- 1, 2, ... per table
    lsn text,                          -- commit LSN of the transaction that carried the change
    decision text not null,            -- load / evolve / pause / accept
    changes text,                      -- what changed, human readable
    old_schema text,                   -- JSON (schema.schema_to_json), null for a load
    new_schema text not null,          -- JSON
    recorded_at text not null,
    primary key (slot, table_name, version)
);
