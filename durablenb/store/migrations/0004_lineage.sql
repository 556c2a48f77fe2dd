-- durablenb schema, version 4: relations between workflows kept in columns, never in ids.
--
-- lineage_id: the id of the workflow a record's run descends from; archived runs (ID~N) and
--             forks keep it, so a signed record stays valid where it was legitimately copied
--             and nowhere else.
-- archive_of: for an archived earlier run (status superseded), the workflow it was taken from.
-- Children are found through parent_id (indexed here).

ALTER TABLE {schema}.workflows ADD COLUMN lineage_id text;
ALTER TABLE {schema}.workflows ADD COLUMN archive_of text;

-- Runs archived by earlier versions were named ID~N; they are the only rows whose link is
-- recovered from their id, once, here.
UPDATE {schema}.workflows SET archive_of = substring(id FROM '^(.*)~[0-9]+$')
 WHERE status = 'superseded' AND id ~ '~[0-9]+$';
UPDATE {schema}.workflows SET lineage_id = coalesce(archive_of, id);

CREATE INDEX workflows_parent_idx ON {schema}.workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_archive_of_idx ON {schema}.workflows (archive_of) WHERE archive_of IS NOT NULL;

-- Code hashes written before this version digested the syntax tree as each Python version
-- printed it; they are kept, marked, and no longer compared (a step recorded by an earlier
-- version replays instead of re-running because the hash changed its algorithm).
UPDATE {schema}.steps SET code_hash = 'v1:' || code_hash
 WHERE code_hash IS NOT NULL AND code_hash <> 'refresh';
UPDATE {schema}.workflows SET code_hash = 'v1:' || code_hash WHERE code_hash IS NOT NULL;
