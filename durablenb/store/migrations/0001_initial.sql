-- durablenb schema, version 1: workflows and their step records.
-- {schema} is replaced by the quoted schema name.

CREATE TABLE {schema}.workflows (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'superseded')),
    args_digest     text,
    inputs          bytea,
    inputs_codec    text,
    inputs_checksum bigint,
    output          bytea,
    output_codec    text,
    output_checksum bigint,
    error           bytea,
    error_type      text,
    error_message   text,
    error_traceback text,
    code_hash       text,
    executor        text,
    parent_id       text,
    parent_position integer,
    forked_from     text,
    runs            integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);

CREATE INDEX workflows_status_created_idx ON {schema}.workflows (status, created_at);
CREATE INDEX workflows_name_created_idx ON {schema}.workflows (name, created_at);

CREATE TABLE {schema}.steps (
    workflow_id     text NOT NULL
                    REFERENCES {schema}.workflows (id) ON DELETE CASCADE ON UPDATE CASCADE,
    position        integer NOT NULL,
    name            text NOT NULL,
    kind            text NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    output          bytea,
    codec           text,
    checksum        bigint,
    output_bytes    bigint,
    error           bytea,
    error_type      text,
    error_message   text,
    error_traceback text,
    attempts        integer NOT NULL DEFAULT 1,
    code_hash       text,
    child_id        text,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, position)
);

-- Outputs are already compact; keep PostgreSQL from compressing them again.
ALTER TABLE {schema}.steps ALTER COLUMN output SET STORAGE EXTERNAL;
ALTER TABLE {schema}.workflows ALTER COLUMN output SET STORAGE EXTERNAL;
ALTER TABLE {schema}.workflows ALTER COLUMN inputs SET STORAGE EXTERNAL;
