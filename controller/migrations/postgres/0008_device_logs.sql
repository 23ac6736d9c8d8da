-- Device logs on request (issue 16). Keep in step with ../sqlite/0008_device_logs.sql.
--
-- One row per device an operator asked for its logs: the newest request (pending until a tail
-- answering it arrives with a check-in) and the newest tail received. A tail is stored as JSON
-- within the protocol's bounds (fleet_config::protocol::logs: at most 256 KiB of text), cut
-- further by the controller if a device sends more, so the table holds at most that much a
-- device.
CREATE TABLE device_logs (
    device_id        TEXT PRIMARY KEY,
    -- The newest request: its id (growing per device), lines per source, selectors (JSON),
    -- when, by whom, and whether it still waits for its tail.
    request_id       BIGINT NOT NULL,
    request_lines    BIGINT NOT NULL,
    request_services TEXT NOT NULL DEFAULT '[]',
    requested_ms     BIGINT NOT NULL,
    requested_by     TEXT NOT NULL,
    pending          BIGINT NOT NULL DEFAULT 1,
    -- The newest tail received: the request it answers, the tail (JSON), when it arrived.
    tail_request_id  BIGINT,
    tail             TEXT,
    received_ms      BIGINT
);
-- Replicas holding a device's long-poll check-in find the requests made on another replica.
CREATE INDEX device_logs_requested ON device_logs (requested_ms);
