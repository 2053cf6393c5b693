-- 0001_cdc_schema: the one schema cdc-replicator may own on the source, and its heartbeat table.
-- Applied by `cdc-replicator migrate`, and at start only when the config needs these objects
-- (source.heartbeat = "table"); recorded in cdc_replicator.schema_migrations. Never on a replica.

create schema if not exists cdc_replicator;

-- one row, updated every source.heartbeat_interval_seconds when source.heartbeat = "table":
-- a write in the replicated database that lets the slot move on while the tables are idle
create table if not exists cdc_replicator.heartbeat (
    id smallint primary key default 1 check (id = 1),
    beat_at timestamptz not null default now()
);

insert into cdc_replicator.heartbeat (id) values (1) on conflict (id) do nothing;
