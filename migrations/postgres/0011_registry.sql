-- The registry: a namespace's own trigger and action definitions, with
-- their versions (an edit makes a new one; a published workflow pins the
-- versions it was validated against, in workflow_versions.registry), and
-- which definitions, its own or built-in, the namespace has disabled.
-- Append-only: never edit once landed.
CREATE TABLE registry_entries (
    namespace      TEXT NOT NULL,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,                -- action | trigger
    builtin        BOOLEAN NOT NULL,             -- a built-in's row holds only `enabled`
    enabled        BOOLEAN NOT NULL,
    latest_version INTEGER NOT NULL,             -- 0 for a built-in
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    deleted_at     TIMESTAMPTZ,                  -- its versions stay for what pins them
    PRIMARY KEY (namespace, name)
);
-- What the relays read every few seconds.
CREATE INDEX registry_entries_disabled ON registry_entries (namespace, name) WHERE NOT enabled;

CREATE TABLE registry_versions (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    definition JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

-- {"crm.update_contact": 3}: the registry versions a published version was
-- validated against and runs with. NULL: none (built-in actions only).
ALTER TABLE workflow_versions ADD COLUMN registry JSONB;
