-- High availability (issue 14). Keep in step with ../postgres/.
--
-- The leader lease: one row, taken and renewed with conditional UPDATEs on the database's own
-- clock. `epoch` grows by one at every change of holder; every write made on behalf of
-- leadership checks, in its own transaction, that the lease still has this replica's holder and
-- epoch and has not expired (fencing). `session` is the backend pid of the holder's lease
-- connection on PostgreSQL (a holder whose session is gone, a crashed replica, is replaced at
-- once; one whose connection hangs, at expiry).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL DEFAULT '',
    epoch       BIGINT NOT NULL DEFAULT 0,
    expires_ms  BIGINT NOT NULL DEFAULT 0,
    acquired_ms BIGINT NOT NULL DEFAULT 0,
    session     BIGINT
);
INSERT INTO leases (name) VALUES ('leader');

-- Every rollout write is a compare-and-swap on `version`; `updated_by` names the replica that
-- wrote last and `epoch` its leader epoch (NULL for an operator's action, which any replica
-- may take).
ALTER TABLE rollouts ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE rollouts ADD COLUMN updated_by TEXT NOT NULL DEFAULT '';
ALTER TABLE rollouts ADD COLUMN epoch BIGINT;
