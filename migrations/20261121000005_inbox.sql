-- Inbox: message ids a consumer has applied, recorded with the effect.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    subject     text        NOT NULL,
    -- Not a foreign key: a message about an unknown case is recorded too.
    case_id     uuid,
    result      jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_by_age ON inbox (received_at);
