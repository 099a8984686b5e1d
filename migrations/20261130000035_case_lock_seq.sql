-- Issue #15: a transition may write in one statement, without holding the
-- case lock while it decides (see docs/DECISIONS.md, "One-statement
-- transitions"). It reads the case, decides, and writes only if the row is
-- still the one it read. `version` changes with every transition, but a
-- writer that only locks the case (a worker storing its result, a person's
-- plan, a re-drive, a rejected transition) leaves it alone; every locker
-- therefore counts itself here, so the one-statement write also refuses
-- when any of them came between its read and its write.
ALTER TABLE ops_case ADD COLUMN lock_seq bigint NOT NULL DEFAULT 0;

-- The one-statement write ends with this when its conditional update found
-- the case changed: the statement fails as a whole, so the claim it made
-- (idempotency key or inbox record) is undone with it, and the orchestrator
-- retries under the lock.
CREATE FUNCTION transition_refused() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'the case changed between the read and the write'
        USING ERRCODE = 'serialization_failure';
END
$$;
