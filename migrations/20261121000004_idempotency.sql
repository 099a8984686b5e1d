-- HTTP Idempotency-Key records, scoped by the authenticated actor.
CREATE TABLE idempotency (
    actor           text        NOT NULL,
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_hash    text        NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    case_id         uuid        REFERENCES ops_case (id),
    response_status smallint    CHECK (response_status BETWEEN 100 AND 599),
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key),
    CHECK ((response_status IS NULL) = (response_body IS NULL))
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
