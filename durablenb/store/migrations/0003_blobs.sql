-- durablenb schema, version 3: large values as content-addressed blobs.
-- A record holds either its bytes inline (output) or the SHA-256 of a blob (blob).

ALTER TABLE {schema}.steps ADD COLUMN blob text;
ALTER TABLE {schema}.workflows ADD COLUMN output_blob text;
ALTER TABLE {schema}.workflows ADD COLUMN inputs_blob text;

-- The blobs themselves when they live in the database (a server URL without
-- DURABLENB_BLOB_URL): 4 MB rows, stored without PostgreSQL compressing them again.
CREATE TABLE {schema}.blob_objects (
    ref        text PRIMARY KEY,
    size       bigint NOT NULL,
    chunks     integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE {schema}.blob_chunks (
    ref  text NOT NULL,
    seq  integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (ref, seq)
);
ALTER TABLE {schema}.blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
