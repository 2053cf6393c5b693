-- Least-privilege role for cdc-replicator (a template: run it yourself, as a superuser, with psql).
-- It is not applied automatically: it needs a password and rights the daemon should never hold.
--
--   psql -v role=cdc_replicator -v password="'...'" -v schema=public -f replication_role.sql app
--
-- The role may log in, use replication (logical slots) and read the replicated tables; nothing else.
-- The publication is created by the tables' owner (or let the daemon create it if the role owns them):
--   create publication cdc_replicator for table public.orders, public.customers
--       with (publish_via_partition_root = true);

create role :"role" with login replication password :password;

grant connect on database :"DBNAME" to :"role";
grant usage on schema :"schema" to :"role";
-- read access for the initial load and re-syncs (COPY); one line per table is stricter:
--   grant select on public.orders to cdc_replicator;
grant select on all tables in schema :"schema" to :"role";

-- only with source.heartbeat = "table" (after `cdc-replicator migrate` created the schema):
--   grant usage on schema cdc_replicator to cdc_replicator;
--   grant update on cdc_replicator.heartbeat to cdc_replicator;
