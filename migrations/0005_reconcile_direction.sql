-- Which way a reconcile run copied: `both`, or `to-SERVER` (only that
-- server was filled). Retention counts a raw chunk as reconciled when clean
-- runs between its two servers together cover it in both directions. Runs
-- recorded before this migration have no direction and prove nothing: the
-- next nightly reconcile records one.

ALTER TABLE essops.reconcile_runs ADD COLUMN direction text;
