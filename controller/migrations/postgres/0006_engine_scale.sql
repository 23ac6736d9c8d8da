-- The rollout engine at 100,000 devices (issue 14). Keep in step with the other backend.
--
-- Each device's record in a rollout is a row of its own, written only when it changes: a pass
-- that moves 50 devices writes 50 small rows, not the rollout's whole state. A device still
-- waiting for its wave has no row (the rollout's plan says where it is). `rollouts.data` keeps
-- the rest: the policy, the waves and the state.
CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
-- When a device's row last changed in what the rollout engine sees (a check-in that only says
-- "still here" moves `last_seen_ms` alone): the leader's engine reads whole only the rows that
-- changed since its last pass, and of the others their last check-in.
ALTER TABLE devices ADD COLUMN changed_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_changed ON devices (changed_ms);
-- (No index on last_seen_ms: every check-in moves it, and an index there would be one more
-- page written per check-in; the engine's read of it scans two columns instead.)
-- The engine's current rollout, found without reading the others.
CREATE INDEX rollouts_created ON rollouts (created_ms, id);
