-- How far back a namespace's frequency counts reach for its workflows' own
-- caps: a workflow that overrides the namespace's caps with a longer window
-- raises it when published, so every subject's sends are kept that long
-- (otherwise a send pruned for the namespace's shorter caps would be missing
-- from the workflow's count). Never lowered. Append-only: never edit once
-- landed.
CREATE TABLE cap_horizons (
    namespace      TEXT NOT NULL PRIMARY KEY,
    window_seconds BIGINT NOT NULL
);
