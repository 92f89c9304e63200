-- Run history: what essops measured and did, in a schema of its own in every
-- site database on every server. A result is written to the server it
-- describes (loss of server X to X; a reconcile run to both servers).
-- `essops status`, Prometheus and `essops report` read it.

CREATE SCHEMA IF NOT EXISTS essops;

-- Loss per device and whole local day of the site. Re-measuring a day
-- replaces its rows (delete and insert in one transaction).
CREATE TABLE essops.loss_daily (
    site          text             NOT NULL,
    server        text             NOT NULL,
    table_name    text             NOT NULL,
    device        text             NOT NULL,  -- "bank 1 / rack 3"; "site" for etc
    device_ids    smallint[]       NOT NULL,
    day           date             NOT NULL,  -- the site's local day
    configured    boolean          NOT NULL,  -- false: in the data, not in the config
    expected      bigint           NOT NULL,
    observed      bigint           NOT NULL,
    missing       bigint           NOT NULL,
    gaps          integer          NOT NULL,
    longest_gap_s bigint           NOT NULL,
    loss_pct      double precision NOT NULL,
    grade         text             NOT NULL CHECK (grade IN ('info', 'warning', 'critical')),
    measured_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (site, server, table_name, day, device)
);
CREATE INDEX loss_daily_day ON essops.loss_daily (day);

-- The same per table and day.
CREATE VIEW essops.loss_daily_tables AS
SELECT site, server, table_name, day,
       count(*)                                                   AS devices,
       sum(expected)::int8                                        AS expected,
       sum(observed)::int8                                        AS observed,
       sum(missing)::int8                                         AS missing,
       round(100.0 * sum(missing) / nullif(sum(expected), 0), 2)  AS loss_pct,
       max(longest_gap_s)                                         AS longest_gap_s,
       count(*) FILTER (WHERE grade = 'critical')                 AS devices_critical,
       count(*) FILTER (WHERE grade = 'warning')                  AS devices_warning,
       max(measured_at)                                           AS measured_at
  FROM essops.loss_daily
 GROUP BY site, server, table_name, day;

-- One row per reconciled table and run, on both servers of the pair.
CREATE TABLE essops.reconcile_runs (
    site             text             NOT NULL,
    table_name       text             NOT NULL,
    window_start     timestamptz      NOT NULL,
    window_end       timestamptz      NOT NULL,
    server_a         text             NOT NULL,
    server_b         text             NOT NULL,
    dry_run          boolean          NOT NULL,
    compared         bigint           NOT NULL,  -- buckets compared
    differing        bigint           NOT NULL,  -- buckets that differed
    copied_to_a      bigint           NOT NULL,
    copied_to_b      bigint           NOT NULL,
    differing_values bigint,                     -- NULL: values were not compared
    route            text,
    seconds          double precision NOT NULL,
    outcome          text             NOT NULL CHECK (outcome IN ('ok', 'failed')),
    error            text,
    at               timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_runs_site_at ON essops.reconcile_runs (site, at DESC);

-- Appended once a minute by each running ingest, per site, device group,
-- host and server: counters are this minute's, gauges are as of its end.
-- The newest row is the ingest's heartbeat.
CREATE TABLE essops.ingest_minutes (
    site          text        NOT NULL,
    devices       text        NOT NULL,  -- the device group ("all" without --devices)
    host          text        NOT NULL,
    server        text        NOT NULL,
    minute        timestamptz NOT NULL,
    polls_ok      bigint      NOT NULL,
    polls_failed  bigint      NOT NULL,
    failed_by_reason jsonb    NOT NULL,
    rows_written  bigint      NOT NULL,
    rows_spooled  bigint      NOT NULL,
    rows_replayed bigint      NOT NULL,
    spool_rows    bigint      NOT NULL,
    spool_bytes   bigint      NOT NULL,
    breakers_open integer     NOT NULL,
    PRIMARY KEY (site, devices, host, server, minute)
);
CREATE INDEX ingest_minutes_minute ON essops.ingest_minutes (minute DESC);

-- What changed while ingest ran.
CREATE TABLE essops.ingest_events (
    site    text        NOT NULL,
    devices text        NOT NULL,
    host    text        NOT NULL,
    server  text,                    -- NULL: not about one server
    at      timestamptz NOT NULL,
    event   text        NOT NULL CHECK (event IN ('breaker_opened', 'breaker_closed', 'batch_quarantined', 'server_set_aside')),
    device  text,
    detail  text        NOT NULL
);
CREATE INDEX ingest_events_at ON essops.ingest_events (site, at DESC);
