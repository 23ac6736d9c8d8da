-- Rollout gates that hold under failure (issue 14). Keep in step with the other backend.
--
-- When a device was last told a new release: the fleet-wide gate counts a device that went
-- silent soon after it (a release that kills networking), not one offline for other reasons.
ALTER TABLE devices ADD COLUMN desired_since_ms BIGINT;
-- Why an operator pinned a device (shown with the pin; the audit log keeps who and when).
ALTER TABLE devices ADD COLUMN pin_reason TEXT NOT NULL DEFAULT '';
-- Who set the pin: `operator` (fleetctl, the dashboard) or `devices.yaml` (the repository;
-- a pin removed from the file is lifted at the next release, an operator's pin is not).
ALTER TABLE devices ADD COLUMN pin_source TEXT NOT NULL DEFAULT '';
-- When what the device is told last changed (desired release, digest, safe-mode request):
-- replicas holding a long-poll check-in look for changes by it.
ALTER TABLE devices ADD COLUMN desired_updated_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX devices_desired_updated ON devices (desired_updated_ms);
