-- Least-privilege role for cdc-replicator (a template: run it yourself, as a superuser or a role
-- with CREATEROLE that may grant on the tables, with psql). It is not applied automatically: it
-- holds a password and needs rights the daemon should never hold.
--
--   psql -v role=cdc_replicator -v password='...' -v schema=public \
--        -v tables='public.orders, public.customers' -f replication_role.sql app
--
-- The role may log in, use replication (logical slots) and read the replicated tables; nothing
-- else: no superuser, it owns nothing, it may not create anything in the database. This is exactly
-- what the test suite runs (tests/integration/test_security.py), on a database where PUBLIC may not
-- connect, for the initial load, streaming, a live re-sync (`snapshot --table`), heartbeats
-- (heartbeat = "message") and `status`.
--
-- The publication is created beforehand by the tables' owner (the role cannot: it owns no table):
--   create publication cdc_replicator for table public.orders, public.customers
--       with (publish_via_partition_root = true);
-- A table added later needs both: alter publication cdc_replicator add table ...; and a grant
-- select on it to the role.

create role :"role" with login replication password :'password';

-- needed where PUBLIC may not connect (revoke connect on database ... from public)
grant connect on database :"DBNAME" to :"role";
-- to find the tables by name and read them
grant usage on schema :"schema" to :"role";
-- the initial load and live re-syncs read them (COPY); streaming itself needs no grant
grant select on :tables to :"role";

-- only with source.heartbeat = "table" (after `cdc-replicator migrate` created the schema):
--   grant usage on schema cdc_replicator to cdc_replicator;
--   grant update on cdc_replicator.heartbeat to cdc_replicator;
-- only in watermark mode on a replica: the same grants, without replication.
