-- Enrollment that cannot take a device over (issue 13). Keep in step with ../postgres/.
--
-- Bootstrap tokens get a public id (list, revoke), a note, an expiry, an optional use count and
-- a label selector of the devices they may enroll. Tokens made before this migration expire
-- seven days after it: they were permanent master keys.
ALTER TABLE bootstrap_tokens ADD COLUMN id TEXT;
ALTER TABLE bootstrap_tokens ADD COLUMN note TEXT NOT NULL DEFAULT '';
ALTER TABLE bootstrap_tokens ADD COLUMN expires_ms BIGINT;
ALTER TABLE bootstrap_tokens ADD COLUMN max_uses BIGINT;
ALTER TABLE bootstrap_tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE bootstrap_tokens ADD COLUMN selector TEXT NOT NULL DEFAULT '{}';
UPDATE bootstrap_tokens SET id = substr(token_hash, 1, 12),
    expires_ms = CAST(strftime('%s', 'now') AS BIGINT) * 1000 + 604800000;
CREATE UNIQUE INDEX bootstrap_tokens_id ON bootstrap_tokens (id);

-- A pairing approved for an id that is enrolled or revoked replaces that device only when the
-- operator said so (`replace`): 1 here, checked again when the agent claims its token.
ALTER TABLE pairings ADD COLUMN replace_ok BIGINT NOT NULL DEFAULT 0;
