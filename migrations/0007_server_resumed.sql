-- A server set aside by ingest (read-only, a privilege, a table or column
-- changing under a migration) is checked again and written to once it
-- passes: `server_resumed` records the end of each episode, as
-- `server_set_aside` records its start.

ALTER TABLE essops.ingest_events DROP CONSTRAINT IF EXISTS ingest_events_event_check;
ALTER TABLE essops.ingest_events ADD CONSTRAINT ingest_events_event_check
    CHECK (event IN ('breaker_opened', 'breaker_closed', 'batch_quarantined', 'server_set_aside', 'server_resumed'));
