-- The console's dashboard counts a namespace's unfinished executions by
-- status (`GET /v1/analytics/executions`). Without this it read every
-- execution of the namespace (100 ms for 1,000,000 on PostgreSQL, growing
-- with the history that is kept); with it, only the unfinished ones.
-- `status` and `finished_at` are indexed already, so an update that leaves
-- them alone stays a HOT update; one that changes the status adds one entry
-- here, to a small index.
CREATE INDEX executions_live ON executions (namespace, status)
    WHERE finished_at IS NULL;
