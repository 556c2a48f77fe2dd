-- durablenb schema, version 8: a label for each `dnb.map` item.
--
-- Which item a step record is, in words: `fit_carrier[AA]` rather than the tenth of twenty
-- `fit_carrier` rows. The label names the item (its text when short, else its index, or
-- what `dnb.map(label=...)` returned); it is not part of the determinism check, which stays
-- on the step's name. NULL: not a map item, or recorded before this version.

ALTER TABLE {schema}.steps ADD COLUMN label text;
