-- See migrations/postgres/0009_segments.sql.

CREATE TABLE segments (
    namespace       TEXT NOT NULL,
    name            TEXT NOT NULL,
    expression      TEXT,                        -- NULL: a static list
    version         INTEGER NOT NULL,            -- each change adds one
    backfill_after  TEXT,                        -- the last subject backfilled; NULL: done
    claimed_by      TEXT,                        -- the node backfilling it
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX segments_to_backfill ON segments (claimed_until) WHERE backfill_after IS NOT NULL;

CREATE TABLE segment_members (
    namespace   TEXT NOT NULL,
    segment     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    entered_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, segment, subject)
);
-- in_segment() and a profile's segments.
CREATE INDEX segment_members_by_subject ON segment_members (namespace, subject);

-- Every entry and exit, in order: a segment trigger reads them after its
-- cursor; an entry's id is its idempotency key.
CREATE TABLE segment_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace   TEXT NOT NULL,
    segment     TEXT NOT NULL,
    subject     TEXT NOT NULL,
    entered     INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX segment_changes_by_segment ON segment_changes (namespace, segment, id);
CREATE INDEX segment_changes_by_subject ON segment_changes (namespace, subject);

-- Where each segment trigger has read to, and the node reading.
CREATE TABLE segment_cursors (
    trigger_id     TEXT PRIMARY KEY,
    last_change    INTEGER NOT NULL,
    claimed_by     TEXT,
    claimed_until  INTEGER
);
