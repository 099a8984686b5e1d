-- One row per request the LLM planner made: what was asked (model, prompt
-- version and hash), how long it took, what it cost, and how it ended.
-- Written as each attempt ends, in its own transaction, so a planner that
-- crashes mid-way still leaves the attempts it paid for.
CREATE TABLE plan_attempt (
    id                uuid        PRIMARY KEY,
    case_id           uuid        NOT NULL REFERENCES ops_case (id),
    -- The cmd.plan.generate envelope the attempt served.
    command_id        uuid        NOT NULL,
    -- 1, 2, … within one delivery of the command; a redelivered command
    -- starts again at 1 (its rows stay apart by created_at).
    attempt           integer     NOT NULL CHECK (attempt >= 1),
    model             text        NOT NULL,
    prompt_version    text        NOT NULL,
    prompt_hash       text        NOT NULL CHECK (prompt_hash ~ '^[0-9a-f]{64}$'),
    structured_output boolean     NOT NULL,
    latency_ms        integer     NOT NULL CHECK (latency_ms >= 0),
    prompt_tokens     integer,
    completion_tokens integer,
    -- valid: passed schema and completeness guard; invalid: answered, but
    -- not a valid plan (re-asked with the errors); timeout, http_error,
    -- garbage (an unreadable response body): retried with backoff.
    outcome           text        NOT NULL
                      CHECK (outcome IN ('valid', 'invalid', 'timeout', 'http_error', 'garbage')),
    errors            jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    -- The model's text, capped, for post-mortems.
    reply             text,
    plan_hash         text        CHECK (plan_hash ~ '^[0-9a-f]{64}$'),
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX plan_attempt_by_case ON plan_attempt (case_id, created_at);
