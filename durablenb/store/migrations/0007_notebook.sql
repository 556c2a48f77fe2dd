-- durablenb schema, version 7: the notebook (or script) a workflow was started from.
--
-- Workflows defined in a notebook belong to it: their default ids include the notebook's
-- path, and `%durable list` shows this notebook's workflows. NULL: started outside any
-- known notebook or script, or recorded before this version.

ALTER TABLE {schema}.workflows ADD COLUMN notebook text;
