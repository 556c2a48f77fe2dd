-- durablenb schema, version 5: step records without a foreign key to their workflow.
--
-- The key made every step record lock its workflow's row (a row lock written to the table
-- and the log), a third of a step's cost over a plain INSERT on the machines measured. The
-- store removes and renames a workflow's step records itself, in the same transaction as
-- the workflow row (forget, archive, fork, re-parenting), and gc removes any orphans.

DO $$
DECLARE c text;
BEGIN
  FOR c IN SELECT conname FROM pg_constraint
            WHERE conrelid = '{schema}.steps'::regclass AND contype = 'f' LOOP
    EXECUTE format('ALTER TABLE {schema}.steps DROP CONSTRAINT %I', c);
  END LOOP;
END $$;

-- The end of a workflow updates its row: with no index on status the update can stay on the
-- same page without touching any index (a HOT update), and a tenth of each page is kept free
-- for it. Listing workflows by status reads the table, which takes milliseconds for
-- hundreds of thousands of rows.
DROP INDEX IF EXISTS {schema}.workflows_status_created_idx;
ALTER TABLE {schema}.workflows SET (fillfactor = 90);
