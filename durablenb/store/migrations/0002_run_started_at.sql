-- durablenb schema, version 2: when the latest run of each workflow started, so step
-- records written before it can be told apart as replayed.

ALTER TABLE {schema}.workflows ADD COLUMN run_started_at timestamptz;
UPDATE {schema}.workflows SET run_started_at = created_at;
ALTER TABLE {schema}.workflows ALTER COLUMN run_started_at SET DEFAULT clock_timestamp();
ALTER TABLE {schema}.workflows ALTER COLUMN run_started_at SET NOT NULL;
