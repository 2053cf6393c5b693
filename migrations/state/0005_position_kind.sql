-- 0005_position_kind: each recorded table position says which kind it is, so no reader guesses from
-- its text: 'lsn' (a logical table: the LSN) or 'watermark' (a polled table: its watermark as JSON).
-- Rows recorded before this migration only ever held watermarks (JSON objects) or LSNs.

alter table cdc_table_status add column position_kind text;

update cdc_table_status set position_kind = 'watermark' where position like '{%';

update cdc_table_status set position_kind = 'lsn' where position is not null and position_kind is null;
