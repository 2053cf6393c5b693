-- 0006_verify: the last `cdc-replicator verify` of each table (its own process), which the daemon
-- exports as metrics and `status` shows. One row per slot and table, replaced by every verify.

create table if not exists cdc_verify (
    slot text not null,
    table_name text not null,
    finished_at text not null,         -- ISO 8601, UTC
    rows bigint not null,              -- source rows compared
    ranges integer not null,           -- key ranges compared
    differences integer not null,      -- missing + extra + differing rows (0: equal)
    seconds double precision not null,
    primary key (slot, table_name)
);
