-- durablenb schema, version 6: which workflow holds which blob, so that forgetting
-- workflows removes the blobs nothing holds any more.
--
-- A writer holds a blob (a row here, under an advisory lock on the blob) before it reuses or
-- publishes the file, and a collector deletes a blob only under that lock and when no row
-- holds it: the two can never cross. %%durable cells hold their variables' blobs here too.

CREATE TABLE {schema}.blob_refs (
    workflow_id text NOT NULL,
    ref         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, ref)
);
CREATE INDEX blob_refs_ref_idx ON {schema}.blob_refs (ref);

-- The blobs that records name in columns are held by their workflows from now on. Blobs
-- named only inside pickled outputs (variables of %%durable cells of earlier versions) are
-- not visible to SQL: a collection never removes blobs made before this migration.
INSERT INTO {schema}.blob_refs (workflow_id, ref)
SELECT workflow_id, blob FROM {schema}.steps WHERE blob IS NOT NULL
UNION SELECT id, output_blob FROM {schema}.workflows WHERE output_blob IS NOT NULL
UNION SELECT id, inputs_blob FROM {schema}.workflows WHERE inputs_blob IS NOT NULL
ON CONFLICT DO NOTHING;
