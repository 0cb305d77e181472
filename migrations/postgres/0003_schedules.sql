-- Schedule triggers fire from here: `next_fire_at` is the next instant of an
-- active schedule (NULL when it is not active, or never fires again); a node
-- claims a due schedule until `claimed_until` while it fires it (the claim
-- lapses when the node dies mid-fire, and the next node fires the same
-- instant again under the same idempotency key, so once in all).
ALTER TABLE triggers ADD COLUMN next_fire_at TIMESTAMPTZ;
ALTER TABLE triggers ADD COLUMN last_fired_at TIMESTAMPTZ;
ALTER TABLE triggers ADD COLUMN claimed_by TEXT;
ALTER TABLE triggers ADD COLUMN claimed_until TIMESTAMPTZ;
CREATE INDEX triggers_due ON triggers (next_fire_at) WHERE next_fire_at IS NOT NULL;
-- Schedules activated before anything ran them start now: nothing ran them,
-- so nothing was missed (the runner fires nothing earlier than the moment a
-- trigger became active, `updated_at`).
UPDATE triggers SET next_fire_at = now(), updated_at = now()
    WHERE kind = 'schedule' AND state = 'active';
