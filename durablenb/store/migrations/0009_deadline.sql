-- durablenb schema, version 9: a workflow's deadline.
--
-- When a workflow with a `timeout=` is cancelled: its first start plus its timeout. Written
-- once, so a resume after a crash keeps it; `dnb.resume` and a rerun of a finished workflow
-- clear it, and the run they start sets a new one. NULL: no timeout.

ALTER TABLE {schema}.workflows ADD COLUMN deadline timestamptz;
