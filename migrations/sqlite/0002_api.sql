-- API keys, trigger instances, and the indexes the listing API needs
-- (SQLite). Append-only: never edit once landed. Instants are INTEGER
-- milliseconds; JSON is TEXT.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    name        TEXT,
    hash        TEXT NOT NULL,
    scopes      TEXT NOT NULL,                   -- a JSON array of strings
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE UNIQUE INDEX api_keys_hash_unique ON api_keys (hash);
CREATE INDEX api_keys_by_namespace ON api_keys (namespace, created_at);

CREATE TABLE triggers (
    id          TEXT PRIMARY KEY,
    namespace   TEXT NOT NULL,
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    kind        TEXT NOT NULL,
    path        TEXT,
    config      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX triggers_path_unique ON triggers (namespace, path)
    WHERE path IS NOT NULL AND state <> 'destroyed';
CREATE INDEX triggers_by_namespace ON triggers (namespace, workflow_id, created_at);

CREATE INDEX executions_by_namespace ON executions (namespace, id);
CREATE INDEX executions_by_namespace_subject ON executions (namespace, subject, id)
    WHERE subject IS NOT NULL;
