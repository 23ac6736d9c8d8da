-- The dashboard: browser sessions and each device's telemetry over time. Same in both dialects.

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users(name),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- One sample per device every few minutes (see db/telemetry.rs), pruned after a day.
CREATE TABLE telemetry_samples (
    device_id       TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    cpu_percent     DOUBLE PRECISION,
    mem_used_bytes  BIGINT,
    mem_total_bytes BIGINT,
    disk_free_bytes BIGINT,
    temperature_c   DOUBLE PRECISION,
    load1           DOUBLE PRECISION,
    PRIMARY KEY (device_id, at_ms)
);
CREATE INDEX telemetry_samples_at ON telemetry_samples (at_ms);

ALTER TABLE devices ADD COLUMN telemetry_sampled_ms BIGINT;
