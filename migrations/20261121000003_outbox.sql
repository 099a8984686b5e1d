-- Outbox: messages committed with the state that caused them. The relay
-- publishes a row and deletes it once JetStream acked it.
CREATE TABLE outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Fixed at insert: the envelope id and the Nats-Msg-Id, reused on re-publish.
    message_id  uuid        NOT NULL UNIQUE,
    case_id     uuid        REFERENCES ops_case (id),
    subject     text        NOT NULL CHECK (subject ~ '^(cmd|evt)\.[a-z0-9_.]+$'),
    -- The envelope exactly as published (JSON text: written once, read once).
    payload     text        NOT NULL,
    traceparent text,
    -- The wall clock at insert, not the transaction start: lag is measured from it.
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts    integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    failed_at   timestamptz,
    last_error  text
);

CREATE INDEX outbox_pending ON outbox (id) WHERE failed_at IS NULL;
-- The relay checks that no older row of a case is still waiting.
CREATE INDEX outbox_pending_by_case ON outbox (case_id, id) WHERE failed_at IS NULL;
