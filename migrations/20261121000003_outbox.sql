-- Outbox: messages committed with the state that caused them; the relay publishes them.
CREATE TABLE outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Fixed at insert: the envelope id and the Nats-Msg-Id, reused on re-publish.
    message_id   uuid        NOT NULL UNIQUE,
    case_id      uuid        REFERENCES ops_case (id),
    subject      text        NOT NULL CHECK (subject ~ '^(cmd|evt)\.[a-z0-9_.]+$'),
    payload      jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    failed_at    timestamptz,
    last_error   text,
    CHECK (published_at IS NULL OR failed_at IS NULL)
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND failed_at IS NULL;
