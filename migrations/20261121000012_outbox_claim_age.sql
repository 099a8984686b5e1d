-- The claim of migration 11 also returns each row's age (since its insert,
-- on the database's clock): the relay adds the time from the claim to the
-- row's ack, so `outbox_lag_seconds` ends at the ack rather than at the
-- delete, and needs no clock shared between the relay's host and the
-- database's.
DROP FUNCTION outbox_claim(bigint, integer);
CREATE FUNCTION outbox_claim(batch bigint, lock_ns integer)
RETURNS TABLE (id bigint, message_id uuid, order_key uuid, subject text,
               payload text, traceparent text, age float8)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    keys    uuid[];
    cut_off bigint;
BEGIN
    -- The relay's commit does not wait for its WAL flush: a delete lost in a
    -- database crash only re-publishes acked rows under their old
    -- Nats-Msg-Id, which JetStream drops inside its duplicate window.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Take the case locks walking the pending index in id order; a row of a
    -- case another relay holds is passed over. The lock filter sits above
    -- the LIMITed scan, so it runs only for the rows looked at, and the scan
    -- stops after 4 * batch rows rather than walking the whole backlog when
    -- other relays hold the oldest cases.
    SELECT array_agg(DISTINCT t.k), max(t.id) INTO keys, cut_off
    FROM (SELECT h.id, h.k
          FROM (SELECT o.id, COALESCE(o.case_id, o.message_id) AS k
                FROM outbox o WHERE o.failed_at IS NULL
                ORDER BY o.id LIMIT batch * 4) h
          WHERE pg_try_advisory_xact_lock(lock_ns, hashtext(h.k::text))
          LIMIT batch) t;
    IF keys IS NULL THEN
        RETURN;
    END IF;
    -- The held cases' waiting rows up to the last id taken, oldest first.
    RETURN QUERY
        SELECT o.id, o.message_id, COALESCE(o.case_id, o.message_id), o.subject,
               o.payload, o.traceparent,
               extract(epoch FROM clock_timestamp() - o.created_at)::float8
        FROM outbox o
        WHERE o.failed_at IS NULL AND o.id <= cut_off
          AND (o.case_id = ANY(keys) OR (o.case_id IS NULL AND o.message_id = ANY(keys)))
        ORDER BY o.id;
END
$$;
