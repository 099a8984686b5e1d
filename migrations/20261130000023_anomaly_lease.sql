-- A detection is taken through intake in intake's own transaction (which
-- marks it taken); analysts claim the earliest pending detection of each
-- fingerprint for a short lease instead of holding row locks across
-- intake, which could wait on a case lock held by the very intake it
-- waits for.
ALTER TABLE anomaly ADD COLUMN claimed_until timestamptz;
