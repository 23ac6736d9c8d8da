-- Fleet controller schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_init.sql: the
-- same tables, columns and indexes; only types and id generation differ.

CREATE TABLE devices (
    id                  TEXT PRIMARY KEY,
    hostname            TEXT NOT NULL DEFAULT '',
    arch                TEXT NOT NULL DEFAULT '',
    agent_version       TEXT NOT NULL DEFAULT '',
    token_hash          TEXT UNIQUE,
    revoked_ms          BIGINT,
    enrolled_ms         BIGINT NOT NULL,
    last_seen_ms        BIGINT,
    current_release     TEXT,
    previous_release    TEXT,
    phase               TEXT NOT NULL DEFAULT 'idle',
    health              TEXT NOT NULL DEFAULT 'unknown',
    last_result         TEXT,
    bad_releases        TEXT NOT NULL DEFAULT '[]',
    telemetry           TEXT NOT NULL DEFAULT '{}',
    labels              TEXT NOT NULL DEFAULT '{}',
    in_inventory        BIGINT NOT NULL DEFAULT 0,
    pinned_release      TEXT,
    desired_release     TEXT,
    desired_digest      TEXT,
    acked_seq           BIGINT NOT NULL DEFAULT 0,
    safe_mode_requested BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE pairings (
    code          TEXT PRIMARY KEY,
    claim_hash    TEXT NOT NULL UNIQUE,
    device_id     TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    arch          TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    approved_by   TEXT,
    approved_ms   BIGINT,
    consumed_ms   BIGINT
);

CREATE TABLE device_events (
    device_id TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    at_ms     BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    body      TEXT NOT NULL,
    stored_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users(name),
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

CREATE TABLE bootstrap_tokens (
    token_hash TEXT PRIMARY KEY,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

CREATE TABLE audit (
    id     BIGSERIAL PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE releases (
    sha        TEXT PRIMARY KEY,
    digest     TEXT,
    seen_ms    BIGINT NOT NULL,
    status     TEXT NOT NULL,
    errors     TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL DEFAULT ''
);

CREATE TABLE rollouts (
    id         TEXT PRIMARY KEY,
    release    TEXT NOT NULL,
    state      TEXT NOT NULL,
    active     BIGINT NOT NULL,
    data       TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE INDEX rollouts_active ON rollouts (active, created_ms);
CREATE INDEX audit_at ON audit (at_ms);
