-- ESS measurement tables: one hypertable per device kind, keyed by device ids
-- and "TIMESTAMP". Column names are upper-case and quoted, as in existing
-- deployments. The unique index on the natural key means a sample can never
-- be stored twice, whichever path (ingest, spool replay, reconcile) writes it.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE bank (
    "TIMESTAMP"               timestamptz NOT NULL,
    "BANK_ID"                 smallint    NOT NULL,
    "SOC"                     real,       -- state of charge, %
    "SOH"                     real,       -- state of health, %
    "DC_VOLTAGE"              real,       -- V
    "DC_CURRENT"              real,       -- A, positive = discharge
    "DC_POWER"                real,       -- kW
    "CHARGE_CURRENT_LIMIT"    real,       -- A
    "DISCHARGE_CURRENT_LIMIT" real,       -- A
    "MAX_CELL_VOLTAGE"        real,       -- V
    "MIN_CELL_VOLTAGE"        real,       -- V
    "AVG_CELL_VOLTAGE"        real,       -- V
    "MAX_CELL_TEMP"           real,       -- degC
    "MIN_CELL_TEMP"           real,       -- degC
    "AVG_CELL_TEMP"           real,       -- degC
    "INSULATION_RESISTANCE"   real,       -- kOhm
    "STATUS"                  integer,    -- status word
    "ALARM"                   integer,    -- alarm bits
    "FAULT"                   integer     -- fault bits
);
SELECT create_hypertable('bank', by_range('TIMESTAMP', INTERVAL '1 day'));
CREATE UNIQUE INDEX bank_natural_key ON bank ("BANK_ID", "TIMESTAMP");

CREATE TABLE rack (
    "TIMESTAMP"               timestamptz NOT NULL,
    "BANK_ID"                 smallint    NOT NULL,
    "RACK_ID"                 smallint    NOT NULL,
    "SOC"                     real,
    "SOH"                     real,
    "DC_VOLTAGE"              real,
    "DC_CURRENT"              real,
    "DC_POWER"                real,
    "MAX_CELL_VOLTAGE"        real,
    "MIN_CELL_VOLTAGE"        real,
    "AVG_CELL_VOLTAGE"        real,
    "MAX_CELL_VOLTAGE_POS"    smallint,   -- module/cell position of the extreme
    "MIN_CELL_VOLTAGE_POS"    smallint,
    "MAX_CELL_TEMP"           real,
    "MIN_CELL_TEMP"           real,
    "AVG_CELL_TEMP"           real,
    "MAX_CELL_TEMP_POS"       smallint,
    "MIN_CELL_TEMP_POS"       smallint,
    "STATUS"                  integer,
    "ALARM"                   integer,
    "FAULT"                   integer
);
SELECT create_hypertable('rack', by_range('TIMESTAMP', INTERVAL '1 day'));
CREATE UNIQUE INDEX rack_natural_key ON rack ("BANK_ID", "RACK_ID", "TIMESTAMP");

CREATE TABLE pcs (
    "TIMESTAMP"               timestamptz NOT NULL,
    "PCS_ID"                  smallint    NOT NULL,
    "AC_ACTIVE_POWER"         real,       -- kW, positive = discharge to grid
    "AC_REACTIVE_POWER"       real,       -- kvar
    "AC_POWER_FACTOR"         real,
    "AC_FREQUENCY"            real,       -- Hz
    "AC_VOLTAGE_RS"           real,       -- V line-to-line
    "AC_VOLTAGE_ST"           real,
    "AC_VOLTAGE_TR"           real,
    "AC_CURRENT_R"            real,       -- A
    "AC_CURRENT_S"            real,
    "AC_CURRENT_T"            real,
    "DC_VOLTAGE"              real,
    "DC_CURRENT"              real,
    "DC_POWER"                real,
    "INTERNAL_TEMP"           real,       -- degC
    "CHARGED_ENERGY"          double precision, -- kWh, lifetime counter
    "DISCHARGED_ENERGY"       double precision, -- kWh, lifetime counter
    "OPERATION_MODE"          smallint,
    "STATUS"                  integer,
    "ALARM"                   integer,
    "FAULT"                   integer
);
SELECT create_hypertable('pcs', by_range('TIMESTAMP', INTERVAL '1 day'));
CREATE UNIQUE INDEX pcs_natural_key ON pcs ("PCS_ID", "TIMESTAMP");

-- Site-level auxiliaries (one logical device per site): environment, HVAC,
-- fire system, grid meter. EXTRA carries deployment-specific JSON.
CREATE TABLE etc (
    "TIMESTAMP"               timestamptz NOT NULL,
    "AMBIENT_TEMP"            real,
    "AMBIENT_HUMIDITY"        real,
    "HVAC_STATUS"             integer,
    "FIRE_ALARM"              integer,
    "METER_ACTIVE_POWER"      real,
    "METER_IMPORT_ENERGY"     double precision,
    "METER_EXPORT_ENERGY"     double precision,
    "EXTRA"                   jsonb
);
SELECT create_hypertable('etc', by_range('TIMESTAMP', INTERVAL '1 day'));
CREATE UNIQUE INDEX etc_natural_key ON etc ("TIMESTAMP");
