-- Messages a consumer could not apply and will never retry: kept with the reason.
CREATE TABLE dead_letter (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text        NOT NULL,
    subject     text        NOT NULL,
    stream_seq  bigint,
    -- The envelope id when the body could be read that far.
    message_id  uuid,
    case_id     uuid,
    reason      text        NOT NULL CHECK (reason IN ('malformed_envelope', 'subject_mismatch',
                                'unknown_type', 'unknown_case', 'invalid_data', 'max_deliver_exceeded')),
    detail      text        NOT NULL,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_by_consumer ON dead_letter (consumer, received_at DESC);
