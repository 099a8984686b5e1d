-- Timeline: accepted transitions and rejected attempts, append-only.
CREATE TABLE case_timeline (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             uuid        NOT NULL UNIQUE,
    case_id        uuid        NOT NULL REFERENCES ops_case (id),
    kind           text        NOT NULL CHECK (kind IN ('created', 'transition', 'rejected')),
    event          text        CHECK (event IN ('start_analysis', 'analysis_done', 'plan_ready',
                                   'plan_failed', 'gate_approved', 'gate_rejected', 'exec_done',
                                   'exec_failed', 'verify_pass', 'verify_failed', 'resume',
                                   'dismiss')),
    from_status    text        CHECK (from_status IN ('NEW', 'ANALYZING', 'PLANNING', 'WAIT_GATE',
                                   'EXECUTING', 'VERIFYING', 'CLOSED', 'PARKED')),
    to_status      text        CHECK (to_status IN ('NEW', 'ANALYZING', 'PLANNING', 'WAIT_GATE',
                                   'EXECUTING', 'VERIFYING', 'CLOSED', 'PARKED')),
    -- The case version after this entry (unchanged for a rejected attempt).
    version        bigint      NOT NULL CHECK (version >= 1),
    actor          text        NOT NULL,
    reason         text,
    rejection_code text,
    correlation_id uuid        NOT NULL,
    meta           jsonb       NOT NULL DEFAULT '{}',
    at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'created') = (event IS NULL)),
    CHECK ((kind = 'rejected') = (rejection_code IS NOT NULL)),
    CHECK ((kind = 'rejected') = (to_status IS NULL) OR kind = 'created')
);

-- Each version of a case is produced exactly once.
CREATE UNIQUE INDEX case_timeline_one_entry_per_version
    ON case_timeline (case_id, version) WHERE kind <> 'rejected';
CREATE INDEX case_timeline_by_case ON case_timeline (case_id, seq);
