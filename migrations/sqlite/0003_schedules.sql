-- See migrations/postgres/0003_schedules.sql. Instants are INTEGER
-- milliseconds since the epoch.
ALTER TABLE triggers ADD COLUMN next_fire_at INTEGER;
ALTER TABLE triggers ADD COLUMN last_fired_at INTEGER;
ALTER TABLE triggers ADD COLUMN claimed_by TEXT;
ALTER TABLE triggers ADD COLUMN claimed_until INTEGER;
CREATE INDEX triggers_due ON triggers (next_fire_at) WHERE next_fire_at IS NOT NULL;
UPDATE triggers
    SET next_fire_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE kind = 'schedule' AND state = 'active';
