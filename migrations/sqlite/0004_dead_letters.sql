-- See migrations/postgres/0004_dead_letters.sql.
CREATE TABLE dead_letters (
    id                TEXT PRIMARY KEY,
    namespace         TEXT NOT NULL,
    trigger_id        TEXT NOT NULL,
    topic             TEXT NOT NULL,
    message_partition INTEGER NOT NULL,
    message_offset    INTEGER NOT NULL,
    message_key       TEXT,
    payload           TEXT,
    reason            TEXT NOT NULL,
    created_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX dead_letters_message
    ON dead_letters (trigger_id, topic, message_partition, message_offset);
CREATE INDEX dead_letters_by_trigger ON dead_letters (namespace, trigger_id, id);
