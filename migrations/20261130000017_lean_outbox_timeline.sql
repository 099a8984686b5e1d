-- Issue #15, second cut: fewer index entries per transition.

-- The timeline's key is its entry id (a replay of an idempotent request
-- looks its entry up by id). `seq` still numbers entries, and per-case
-- order is read through case_timeline_by_case (case_id, seq); no read
-- orders by seq alone, so its own index went unread.
ALTER TABLE case_timeline
    DROP CONSTRAINT case_timeline_pkey,
    DROP CONSTRAINT case_timeline_id_key,
    ADD CONSTRAINT case_timeline_pkey PRIMARY KEY (id);

-- The outbox holds only rows that wait. A row that can never be published
-- moves to outbox_failed (the same columns, kept for the operator) instead
-- of staying with `failed_at` set, so the outbox needs no partial indexes:
-- its primary key serves the relay's scan in id order and the deletes, and
-- one index by case serves the relay's per-case claim.
CREATE TABLE outbox_failed (
    id          bigint      PRIMARY KEY,
    message_id  uuid        NOT NULL,
    case_id     uuid,
    subject     text        NOT NULL,
    payload     text        NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL,
    attempts    integer     NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_error  text
);

INSERT INTO outbox_failed (id, message_id, case_id, subject, payload, traceparent, created_at,
                           attempts, failed_at, last_error)
SELECT id, message_id, case_id, subject, payload, traceparent, created_at, attempts, failed_at,
       last_error
FROM outbox WHERE failed_at IS NOT NULL;
DELETE FROM outbox WHERE failed_at IS NOT NULL;

DROP INDEX outbox_pending;
DROP INDEX outbox_pending_by_case;
ALTER TABLE outbox DROP COLUMN failed_at;
CREATE INDEX outbox_by_case ON outbox (case_id, id);

-- The claim of migration 12, on an outbox where every row waits.
CREATE OR REPLACE FUNCTION outbox_claim(batch bigint, lock_ns integer)
RETURNS TABLE (id bigint, message_id uuid, order_key uuid, subject text,
               payload text, traceparent text, age float8)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    keys    uuid[];
    cut_off bigint;
BEGIN
    -- See migration 12: a lost delete only re-publishes under the same
    -- Nats-Msg-Id, which JetStream drops.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Case locks taken walking the primary key in id order; a row of a case
    -- another relay holds is passed over; at most 4 * batch rows looked at.
    SELECT array_agg(DISTINCT t.k), max(t.id) INTO keys, cut_off
    FROM (SELECT h.id, h.k
          FROM (SELECT o.id, COALESCE(o.case_id, o.message_id) AS k
                FROM outbox o ORDER BY o.id LIMIT batch * 4) h
          WHERE pg_try_advisory_xact_lock(lock_ns, hashtext(h.k::text))
          LIMIT batch) t;
    IF keys IS NULL THEN
        RETURN;
    END IF;
    -- A second statement, so a second snapshot: taken after the locks were
    -- granted, it sees every delete of a case's previous holder.
    RETURN QUERY
        SELECT o.id, o.message_id, COALESCE(o.case_id, o.message_id), o.subject,
               o.payload, o.traceparent,
               extract(epoch FROM clock_timestamp() - o.created_at)::float8
        FROM outbox o
        WHERE o.id <= cut_off
          AND (o.case_id = ANY(keys) OR (o.case_id IS NULL AND o.message_id = ANY(keys)))
        ORDER BY o.id;
END
$$;
