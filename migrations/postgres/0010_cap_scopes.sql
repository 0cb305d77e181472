-- The sends a namespace's workflows' own frequency caps count, and how long
-- they must be kept: a workflow that caps its sends (settings.frequency_caps)
-- records each cap's channel, category and window here when published, so
-- every journey's sends of that channel and category are counted and kept
-- that long in the namespace, whatever the namespace's own caps. Never
-- lowered. Append-only: never edit once landed.
CREATE TABLE cap_scopes (
    namespace      TEXT NOT NULL,
    channel        TEXT NOT NULL,                -- a channel or '*'
    category       TEXT NOT NULL,                -- a category or '*'
    window_seconds BIGINT NOT NULL,
    PRIMARY KEY (namespace, channel, category)
);
