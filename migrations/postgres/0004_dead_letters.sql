-- Messages an event trigger could not use (a value that is not JSON, a
-- condition or key that fails on it, a start refused for good), with the
-- reason; their partition moves on. A redelivered message is kept once.
CREATE TABLE dead_letters (
    id                TEXT PRIMARY KEY,          -- dlq_… (UUIDv7: sorts by time)
    namespace         TEXT NOT NULL,
    trigger_id        TEXT NOT NULL,
    topic             TEXT NOT NULL,
    message_partition INTEGER NOT NULL,
    message_offset    BIGINT NOT NULL,
    message_key       TEXT,
    payload           TEXT,                      -- the value as text, capped
    reason            TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX dead_letters_message
    ON dead_letters (trigger_id, topic, message_partition, message_offset);
CREATE INDEX dead_letters_by_trigger ON dead_letters (namespace, trigger_id, id);
