-- Rollups: per device and minute, and per device and hour, the sample count
-- and avg/min/max of the measures the cache aggregates (schema.rs's
-- `Table::measures`). `essops rollup` keeps them from the raw rows;
-- `essops retention` drops raw chunks only once these hold them.
--
-- In essops's schema: how far each raw table is rolled up, and up to which
-- reconcile run the windows reconcile copied rows into have been re-rolled.

CREATE TABLE essops.rollup_marks (
    table_name      text        PRIMARY KEY, -- the raw table: bank, rack, pcs, etc
    rolled_until    timestamptz NOT NULL,    -- every bucket before this is rolled up
    reconciles_seen timestamptz NOT NULL,    -- reconcile runs up to this one are re-rolled
    at              timestamptz NOT NULL DEFAULT now()
);

-- Raw chunks `essops retention` dropped on this server, with their row
-- count: the other server's retention compares against it once it is gone.
CREATE TABLE essops.retention_drops (
    table_name  text        NOT NULL,
    range_start timestamptz NOT NULL,
    range_end   timestamptz NOT NULL,
    rows        bigint      NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, range_start)
);

CREATE TABLE bank_1m (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "SOC_AVG"                double precision,
    "SOC_MIN"                double precision,
    "SOC_MAX"                double precision,
    "DC_VOLTAGE_AVG"         double precision,
    "DC_VOLTAGE_MIN"         double precision,
    "DC_VOLTAGE_MAX"         double precision,
    "DC_CURRENT_AVG"         double precision,
    "DC_CURRENT_MIN"         double precision,
    "DC_CURRENT_MAX"         double precision,
    "DC_POWER_AVG"           double precision,
    "DC_POWER_MIN"           double precision,
    "DC_POWER_MAX"           double precision,
    "MAX_CELL_VOLTAGE_AVG"   double precision,
    "MAX_CELL_VOLTAGE_MIN"   double precision,
    "MAX_CELL_VOLTAGE_MAX"   double precision,
    "MIN_CELL_VOLTAGE_AVG"   double precision,
    "MIN_CELL_VOLTAGE_MIN"   double precision,
    "MIN_CELL_VOLTAGE_MAX"   double precision,
    "MAX_CELL_TEMP_AVG"      double precision,
    "MAX_CELL_TEMP_MIN"      double precision,
    "MAX_CELL_TEMP_MAX"      double precision,
    "MIN_CELL_TEMP_AVG"      double precision,
    "MIN_CELL_TEMP_MIN"      double precision,
    "MIN_CELL_TEMP_MAX"      double precision
);
SELECT create_hypertable('bank_1m', by_range('BUCKET', INTERVAL '7 days'));
CREATE UNIQUE INDEX bank_1m_natural_key ON bank_1m ("BANK_ID", "BUCKET");

CREATE TABLE bank_1h (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "SOC_AVG"                double precision,
    "SOC_MIN"                double precision,
    "SOC_MAX"                double precision,
    "DC_VOLTAGE_AVG"         double precision,
    "DC_VOLTAGE_MIN"         double precision,
    "DC_VOLTAGE_MAX"         double precision,
    "DC_CURRENT_AVG"         double precision,
    "DC_CURRENT_MIN"         double precision,
    "DC_CURRENT_MAX"         double precision,
    "DC_POWER_AVG"           double precision,
    "DC_POWER_MIN"           double precision,
    "DC_POWER_MAX"           double precision,
    "MAX_CELL_VOLTAGE_AVG"   double precision,
    "MAX_CELL_VOLTAGE_MIN"   double precision,
    "MAX_CELL_VOLTAGE_MAX"   double precision,
    "MIN_CELL_VOLTAGE_AVG"   double precision,
    "MIN_CELL_VOLTAGE_MIN"   double precision,
    "MIN_CELL_VOLTAGE_MAX"   double precision,
    "MAX_CELL_TEMP_AVG"      double precision,
    "MAX_CELL_TEMP_MIN"      double precision,
    "MAX_CELL_TEMP_MAX"      double precision,
    "MIN_CELL_TEMP_AVG"      double precision,
    "MIN_CELL_TEMP_MIN"      double precision,
    "MIN_CELL_TEMP_MAX"      double precision
);
SELECT create_hypertable('bank_1h', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX bank_1h_natural_key ON bank_1h ("BANK_ID", "BUCKET");

CREATE TABLE rack_1m (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                smallint    NOT NULL,
    "RACK_ID"                smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "SOC_AVG"                double precision,
    "SOC_MIN"                double precision,
    "SOC_MAX"                double precision,
    "DC_VOLTAGE_AVG"         double precision,
    "DC_VOLTAGE_MIN"         double precision,
    "DC_VOLTAGE_MAX"         double precision,
    "DC_CURRENT_AVG"         double precision,
    "DC_CURRENT_MIN"         double precision,
    "DC_CURRENT_MAX"         double precision,
    "DC_POWER_AVG"           double precision,
    "DC_POWER_MIN"           double precision,
    "DC_POWER_MAX"           double precision,
    "MAX_CELL_VOLTAGE_AVG"   double precision,
    "MAX_CELL_VOLTAGE_MIN"   double precision,
    "MAX_CELL_VOLTAGE_MAX"   double precision,
    "MIN_CELL_VOLTAGE_AVG"   double precision,
    "MIN_CELL_VOLTAGE_MIN"   double precision,
    "MIN_CELL_VOLTAGE_MAX"   double precision,
    "MAX_CELL_TEMP_AVG"      double precision,
    "MAX_CELL_TEMP_MIN"      double precision,
    "MAX_CELL_TEMP_MAX"      double precision,
    "MIN_CELL_TEMP_AVG"      double precision,
    "MIN_CELL_TEMP_MIN"      double precision,
    "MIN_CELL_TEMP_MAX"      double precision
);
SELECT create_hypertable('rack_1m', by_range('BUCKET', INTERVAL '7 days'));
CREATE UNIQUE INDEX rack_1m_natural_key ON rack_1m ("BANK_ID", "RACK_ID", "BUCKET");

CREATE TABLE rack_1h (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                smallint    NOT NULL,
    "RACK_ID"                smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "SOC_AVG"                double precision,
    "SOC_MIN"                double precision,
    "SOC_MAX"                double precision,
    "DC_VOLTAGE_AVG"         double precision,
    "DC_VOLTAGE_MIN"         double precision,
    "DC_VOLTAGE_MAX"         double precision,
    "DC_CURRENT_AVG"         double precision,
    "DC_CURRENT_MIN"         double precision,
    "DC_CURRENT_MAX"         double precision,
    "DC_POWER_AVG"           double precision,
    "DC_POWER_MIN"           double precision,
    "DC_POWER_MAX"           double precision,
    "MAX_CELL_VOLTAGE_AVG"   double precision,
    "MAX_CELL_VOLTAGE_MIN"   double precision,
    "MAX_CELL_VOLTAGE_MAX"   double precision,
    "MIN_CELL_VOLTAGE_AVG"   double precision,
    "MIN_CELL_VOLTAGE_MIN"   double precision,
    "MIN_CELL_VOLTAGE_MAX"   double precision,
    "MAX_CELL_TEMP_AVG"      double precision,
    "MAX_CELL_TEMP_MIN"      double precision,
    "MAX_CELL_TEMP_MAX"      double precision,
    "MIN_CELL_TEMP_AVG"      double precision,
    "MIN_CELL_TEMP_MIN"      double precision,
    "MIN_CELL_TEMP_MAX"      double precision
);
SELECT create_hypertable('rack_1h', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX rack_1h_natural_key ON rack_1h ("BANK_ID", "RACK_ID", "BUCKET");

CREATE TABLE pcs_1m (
    "BUCKET"                  timestamptz NOT NULL,
    "PCS_ID"                 smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "AC_ACTIVE_POWER_AVG"    double precision,
    "AC_ACTIVE_POWER_MIN"    double precision,
    "AC_ACTIVE_POWER_MAX"    double precision,
    "AC_REACTIVE_POWER_AVG"  double precision,
    "AC_REACTIVE_POWER_MIN"  double precision,
    "AC_REACTIVE_POWER_MAX"  double precision,
    "AC_FREQUENCY_AVG"       double precision,
    "AC_FREQUENCY_MIN"       double precision,
    "AC_FREQUENCY_MAX"       double precision,
    "DC_VOLTAGE_AVG"         double precision,
    "DC_VOLTAGE_MIN"         double precision,
    "DC_VOLTAGE_MAX"         double precision,
    "DC_CURRENT_AVG"         double precision,
    "DC_CURRENT_MIN"         double precision,
    "DC_CURRENT_MAX"         double precision,
    "DC_POWER_AVG"           double precision,
    "DC_POWER_MIN"           double precision,
    "DC_POWER_MAX"           double precision,
    "INTERNAL_TEMP_AVG"      double precision,
    "INTERNAL_TEMP_MIN"      double precision,
    "INTERNAL_TEMP_MAX"      double precision
);
SELECT create_hypertable('pcs_1m', by_range('BUCKET', INTERVAL '7 days'));
CREATE UNIQUE INDEX pcs_1m_natural_key ON pcs_1m ("PCS_ID", "BUCKET");

CREATE TABLE pcs_1h (
    "BUCKET"                  timestamptz NOT NULL,
    "PCS_ID"                 smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "AC_ACTIVE_POWER_AVG"    double precision,
    "AC_ACTIVE_POWER_MIN"    double precision,
    "AC_ACTIVE_POWER_MAX"    double precision,
    "AC_REACTIVE_POWER_AVG"  double precision,
    "AC_REACTIVE_POWER_MIN"  double precision,
    "AC_REACTIVE_POWER_MAX"  double precision,
    "AC_FREQUENCY_AVG"       double precision,
    "AC_FREQUENCY_MIN"       double precision,
    "AC_FREQUENCY_MAX"       double precision,
    "DC_VOLTAGE_AVG"         double precision,
    "DC_VOLTAGE_MIN"         double precision,
    "DC_VOLTAGE_MAX"         double precision,
    "DC_CURRENT_AVG"         double precision,
    "DC_CURRENT_MIN"         double precision,
    "DC_CURRENT_MAX"         double precision,
    "DC_POWER_AVG"           double precision,
    "DC_POWER_MIN"           double precision,
    "DC_POWER_MAX"           double precision,
    "INTERNAL_TEMP_AVG"      double precision,
    "INTERNAL_TEMP_MIN"      double precision,
    "INTERNAL_TEMP_MAX"      double precision
);
SELECT create_hypertable('pcs_1h', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX pcs_1h_natural_key ON pcs_1h ("PCS_ID", "BUCKET");

CREATE TABLE etc_1m (
    "BUCKET"                  timestamptz NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "AMBIENT_TEMP_AVG"       double precision,
    "AMBIENT_TEMP_MIN"       double precision,
    "AMBIENT_TEMP_MAX"       double precision,
    "AMBIENT_HUMIDITY_AVG"   double precision,
    "AMBIENT_HUMIDITY_MIN"   double precision,
    "AMBIENT_HUMIDITY_MAX"   double precision,
    "METER_ACTIVE_POWER_AVG" double precision,
    "METER_ACTIVE_POWER_MIN" double precision,
    "METER_ACTIVE_POWER_MAX" double precision
);
SELECT create_hypertable('etc_1m', by_range('BUCKET', INTERVAL '7 days'));
CREATE UNIQUE INDEX etc_1m_natural_key ON etc_1m ("BUCKET");

CREATE TABLE etc_1h (
    "BUCKET"                  timestamptz NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "AMBIENT_TEMP_AVG"       double precision,
    "AMBIENT_TEMP_MIN"       double precision,
    "AMBIENT_TEMP_MAX"       double precision,
    "AMBIENT_HUMIDITY_AVG"   double precision,
    "AMBIENT_HUMIDITY_MIN"   double precision,
    "AMBIENT_HUMIDITY_MAX"   double precision,
    "METER_ACTIVE_POWER_AVG" double precision,
    "METER_ACTIVE_POWER_MIN" double precision,
    "METER_ACTIVE_POWER_MAX" double precision
);
SELECT create_hypertable('etc_1h', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX etc_1h_natural_key ON etc_1h ("BUCKET");
