-- Windows `essops rollup` rolled again below its mark (reconcile copied rows
-- into them, or an operator asked for it). `essops cache warm` reads the
-- ones newer than its last run and rebuilds its buckets from there, so a
-- re-rolled hour reaches the dashboards without a `--full` warm.

CREATE TABLE essops.rollup_rerolls (
    table_name text        NOT NULL,  -- the raw table: bank, rack, pcs, etc
    span_start timestamptz NOT NULL,
    span_end   timestamptz NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON essops.rollup_rerolls (at);
