-- The audience: profiles (one per subject in a namespace), the suppression
-- list, frequency caps and the sends they count. Append-only: never edit
-- once landed.

-- A person a journey is about: attributes, channel addresses, preferences.
CREATE TABLE profiles (
    namespace    TEXT NOT NULL,
    subject      TEXT NOT NULL,
    attributes   JSONB NOT NULL,                 -- an object
    addresses    JSONB NOT NULL,                 -- email, phone, push[], chat
    preferences  JSONB NOT NULL,                 -- opted_out, channels{}, categories{}
    timezone     TEXT,
    locale       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, subject)
);

-- Addresses nothing is sent to (hard bounces, complaints, operators'),
-- whatever the message's category.
CREATE TABLE suppressions (
    namespace    TEXT NOT NULL,
    channel      TEXT NOT NULL,
    address      TEXT NOT NULL,                  -- normalized: lower-case email, E.164, token
    reason       TEXT NOT NULL,                  -- bounced, complained, unsubscribed, manual
    detail       TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, channel, address)
);

-- "At most max_sends messages of this channel and category per window",
-- per subject, across all journeys; '*' matches any channel or category.
CREATE TABLE frequency_caps (
    namespace      TEXT NOT NULL,
    channel        TEXT NOT NULL,
    category       TEXT NOT NULL,
    max_sends      INTEGER NOT NULL,
    window_seconds BIGINT NOT NULL,
    on_cap         TEXT NOT NULL,                -- skip | defer
    PRIMARY KEY (namespace, channel, category, window_seconds)
);

-- The sends a subject's caps count, one row per subject (its lock: two
-- workers sending for one person take turns), pruned to the longest window.
CREATE TABLE frequency_counts (
    namespace    TEXT NOT NULL,
    subject      TEXT NOT NULL,
    sends        JSONB NOT NULL,                 -- [{key, channel, category, at}]
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, subject)
);
