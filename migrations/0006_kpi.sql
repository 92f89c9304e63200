-- Battery KPIs per device and whole local day of the site (`essops kpi`),
-- and the alarm and fault intervals they are made of. Re-running a day
-- replaces its rows (delete and insert in one transaction), like loss_daily.
-- `[history] keep_days` prunes both: a keep_days below 90 shortens the SoH
-- trend, which reads its daily medians from kpi_daily.

-- One row per device (table_name rack, bank, pcs) or site (table_name
-- site) and day. The columns status, the report and the trend read are
-- typed; `figures` holds the whole row as `essops kpi --json` prints it.
CREATE TABLE essops.kpi_daily (
    site                text             NOT NULL,
    server              text             NOT NULL,
    table_name          text             NOT NULL CHECK (table_name IN ('rack', 'bank', 'pcs', 'site')),
    device              text             NOT NULL,  -- "bank 1 / rack 3"; "site"
    device_ids          smallint[]       NOT NULL,
    day                 date             NOT NULL,  -- the site's local day
    grade               text             NOT NULL CHECK (grade IN ('info', 'warning', 'critical')),
    samples             bigint           NOT NULL,
    cell_spread_max_mv  double precision,
    cell_spread_p95_mv  double precision,
    soh_median          double precision,
    fault_secs          bigint,
    availability_pct    double precision,
    charged_kwh         double precision,
    discharged_kwh      double precision,
    figures             jsonb            NOT NULL,
    measured_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (site, server, table_name, day, device)
);
CREATE INDEX kpi_daily_day ON essops.kpi_daily (day);

-- Every stretch in which a device's ALARM or FAULT word (bit NULL), or one
-- bit of it, was non-zero. It ends one sample interval after its last
-- non-zero sample; a missing sample ends it; it is split at local midnight.
CREATE TABLE essops.alarm_intervals (
    site        text        NOT NULL,
    server      text        NOT NULL,
    table_name  text        NOT NULL,
    device      text        NOT NULL,
    device_ids  smallint[]  NOT NULL,
    day         date        NOT NULL,
    word        text        NOT NULL CHECK (word IN ('alarm', 'fault')),
    bit         smallint,              -- NULL: the whole word
    bit_name    text,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    duration_s  bigint      NOT NULL,
    samples     bigint      NOT NULL,
    open        boolean     NOT NULL   -- it lasts to the end of the measured day
);
CREATE INDEX alarm_intervals_site_day ON essops.alarm_intervals (site, server, day);
