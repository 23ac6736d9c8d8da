-- Alerts (issue 16). Keep in step with the other backend.
--
-- The problems devices report (`problem_raised` / `problem_cleared` events, kept here as the
-- device's current set when its check-in is stored) and the one-shot findings that alert for
-- a while (`drift_detected`, safe mode's reason), so the alert engine reads what holds now
-- without walking the event history.
CREATE TABLE device_problems (
    device_id TEXT NOT NULL,
    problem   TEXT NOT NULL,
    subject   TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL,
    raised_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, problem, subject)
);
-- One row per alert (an incident of one alert name): its members and what was said are in
-- `data`, written by the leader only; the acknowledgement columns by any replica (an
-- operator's act), never by the leader's writes.
CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    phase       TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    fired_ms    BIGINT,
    resolved_ms BIGINT,
    members     BIGINT NOT NULL DEFAULT 0,
    summary     TEXT NOT NULL DEFAULT '',
    data        TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    acked_by    TEXT,
    acked_ms    BIGINT,
    ack_reason  TEXT
);
CREATE INDEX alerts_phase ON alerts (phase, started_ms);
-- Operators' silences: no message for the alerts (and members) they match until `until_ms`.
CREATE TABLE alert_silences (
    id         TEXT PRIMARY KEY,
    alert      TEXT,
    member     TEXT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    until_ms   BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    ended_by   TEXT,
    ended_ms   BIGINT
);
-- Messages to deliver, written with the alert change that made them (one transaction), each
-- marked once delivered or given up: a restart neither loses nor re-sends one.
CREATE TABLE alert_outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT NOT NULL,
    alert_id     TEXT NOT NULL,
    notifier     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    next_ms      BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    delivered_ms BIGINT,
    dropped_ms   BIGINT,
    last_error   TEXT,
    UNIQUE (message_id, notifier)
);
CREATE INDEX alert_outbox_due ON alert_outbox (delivered_ms, dropped_ms, next_ms);
