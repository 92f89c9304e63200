-- The KPI rollup (`essops rollup`, read by `essops kpi`): per device and
-- 15 minutes, the sample count, the samples with ALARM and FAULT non-zero,
-- each measure's min and max (for the limits), and histograms of the cell
-- voltage spread, the cell temperature spread and SoH: each distinct value
-- (ascending) and, at the same index of the *_N array, its sample count.
-- Histograms merge exactly, so a day's percentiles from 96 buckets equal
-- those of its raw rows. 15 minutes: every zone's local midnight falls on
-- a quarter hour. A bucket a KPI run finds with fewer samples than the raw
-- table holds (rows that came later) is computed from the raw rows instead.

CREATE TABLE bank_kpi (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                 smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "ALARM_SAMPLES"           integer     NOT NULL,
    "FAULT_SAMPLES"           integer     NOT NULL,
    "CELL_SPREAD"             double precision[],
    "CELL_SPREAD_N"           integer[],
    "TEMP_SPREAD"             double precision[],
    "TEMP_SPREAD_N"           integer[],
    "SOH"                     double precision[],
    "SOH_N"                   integer[],
    "SOC_MIN"                 double precision,
    "SOC_MAX"                 double precision,
    "DC_VOLTAGE_MIN"          double precision,
    "DC_VOLTAGE_MAX"          double precision,
    "DC_CURRENT_MIN"          double precision,
    "DC_CURRENT_MAX"          double precision,
    "DC_POWER_MIN"            double precision,
    "DC_POWER_MAX"            double precision,
    "MAX_CELL_VOLTAGE_MIN"    double precision,
    "MAX_CELL_VOLTAGE_MAX"    double precision,
    "MIN_CELL_VOLTAGE_MIN"    double precision,
    "MIN_CELL_VOLTAGE_MAX"    double precision,
    "MAX_CELL_TEMP_MIN"       double precision,
    "MAX_CELL_TEMP_MAX"       double precision,
    "MIN_CELL_TEMP_MIN"       double precision,
    "MIN_CELL_TEMP_MAX"       double precision
);
SELECT create_hypertable('bank_kpi', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX bank_kpi_natural_key ON bank_kpi ("BANK_ID", "BUCKET");

CREATE TABLE rack_kpi (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                 smallint    NOT NULL,
    "RACK_ID"                 smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "ALARM_SAMPLES"           integer     NOT NULL,
    "FAULT_SAMPLES"           integer     NOT NULL,
    "CELL_SPREAD"             double precision[],
    "CELL_SPREAD_N"           integer[],
    "TEMP_SPREAD"             double precision[],
    "TEMP_SPREAD_N"           integer[],
    "SOH"                     double precision[],
    "SOH_N"                   integer[],
    "SOC_MIN"                 double precision,
    "SOC_MAX"                 double precision,
    "DC_VOLTAGE_MIN"          double precision,
    "DC_VOLTAGE_MAX"          double precision,
    "DC_CURRENT_MIN"          double precision,
    "DC_CURRENT_MAX"          double precision,
    "DC_POWER_MIN"            double precision,
    "DC_POWER_MAX"            double precision,
    "MAX_CELL_VOLTAGE_MIN"    double precision,
    "MAX_CELL_VOLTAGE_MAX"    double precision,
    "MIN_CELL_VOLTAGE_MIN"    double precision,
    "MIN_CELL_VOLTAGE_MAX"    double precision,
    "MAX_CELL_TEMP_MIN"       double precision,
    "MAX_CELL_TEMP_MAX"       double precision,
    "MIN_CELL_TEMP_MIN"       double precision,
    "MIN_CELL_TEMP_MAX"       double precision
);
SELECT create_hypertable('rack_kpi', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX rack_kpi_natural_key ON rack_kpi ("BANK_ID", "RACK_ID", "BUCKET");

CREATE TABLE pcs_kpi (
    "BUCKET"                  timestamptz NOT NULL,
    "PCS_ID"                  smallint    NOT NULL,
    "SAMPLES"                 integer     NOT NULL,
    "ALARM_SAMPLES"           integer     NOT NULL,
    "FAULT_SAMPLES"           integer     NOT NULL,
    "CELL_SPREAD"             double precision[],
    "CELL_SPREAD_N"           integer[],
    "TEMP_SPREAD"             double precision[],
    "TEMP_SPREAD_N"           integer[],
    "SOH"                     double precision[],
    "SOH_N"                   integer[],
    "AC_ACTIVE_POWER_MIN"     double precision,
    "AC_ACTIVE_POWER_MAX"     double precision,
    "AC_REACTIVE_POWER_MIN"   double precision,
    "AC_REACTIVE_POWER_MAX"   double precision,
    "AC_FREQUENCY_MIN"        double precision,
    "AC_FREQUENCY_MAX"        double precision,
    "DC_VOLTAGE_MIN"          double precision,
    "DC_VOLTAGE_MAX"          double precision,
    "DC_CURRENT_MIN"          double precision,
    "DC_CURRENT_MAX"          double precision,
    "DC_POWER_MIN"            double precision,
    "DC_POWER_MAX"            double precision,
    "INTERNAL_TEMP_MIN"       double precision,
    "INTERNAL_TEMP_MAX"       double precision
);
SELECT create_hypertable('pcs_kpi', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX pcs_kpi_natural_key ON pcs_kpi ("PCS_ID", "BUCKET");

-- Per bank and 15 minutes, from the rack table: the histogram of the SOC
-- spread across the bank's racks, one value per second with two or more
-- racks reporting SOC.
CREATE TABLE rack_bank_kpi (
    "BUCKET"                  timestamptz NOT NULL,
    "BANK_ID"                 smallint    NOT NULL,
    "SOC_SPREAD"              double precision[],
    "SOC_SPREAD_N"            integer[]
);
SELECT create_hypertable('rack_bank_kpi', by_range('BUCKET', INTERVAL '30 days'));
CREATE UNIQUE INDEX rack_bank_kpi_natural_key ON rack_bank_kpi ("BANK_ID", "BUCKET");

-- Roles `essops migrate --create-roles` made before this version: the
-- writer replaces these buckets (`essops rollup`), the reader reads them
-- (`essops kpi`). Default privileges cover SELECT and INSERT; DELETE is
-- granted here, so an upgrade needs no second `--create-roles`.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'essops_writer') THEN
        GRANT SELECT, INSERT, DELETE ON bank_kpi, rack_kpi, pcs_kpi, rack_bank_kpi TO essops_writer;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'essops_reader') THEN
        GRANT SELECT ON bank_kpi, rack_kpi, pcs_kpi, rack_bank_kpi TO essops_reader;
    END IF;
END
$$;
