-- Executions: one run per exec command (its envelope id is the attempt id
-- that fences results), its steps, and the target locks that keep two
-- cases from changing the same resource at once.
CREATE TABLE exec_run (
    id          uuid        PRIMARY KEY,
    case_id     uuid        NOT NULL REFERENCES ops_case (id),
    plan_hash   text        NOT NULL CHECK (plan_hash ~ '^[0-9a-f]{64}$'),
    -- run: the plan's steps (then its rollback steps if one fails);
    -- rollback: the rollback steps alone (after a failed verification).
    kind        text        NOT NULL CHECK (kind IN ('run', 'rollback')),
    -- The cmd.exec.* envelope id; a redelivered command finds its run.
    attempt_id  uuid        NOT NULL UNIQUE,
    -- The case version the command was issued at; facts carry it, so the
    -- orchestrator rejects results of an attempt the case has moved past.
    case_version bigint     NOT NULL,
    status      text        NOT NULL
                CHECK (status IN ('running', 'done', 'failed', 'rolled_back', 'interrupted', 'blocked')),
    error       text,
    -- Per-step records of what an adapter checked before changing anything
    -- (e.g. a Kubernetes server-side dry run).
    dry_run     jsonb       NOT NULL DEFAULT '[]',
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX exec_run_by_case ON exec_run (case_id, started_at DESC);

CREATE TABLE exec_step (
    run_id      uuid        NOT NULL REFERENCES exec_run (id),
    phase       text        NOT NULL CHECK (phase IN ('step', 'rollback')),
    idx         integer     NOT NULL CHECK (idx >= 0),
    action      text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    tries       integer     NOT NULL DEFAULT 0 CHECK (tries >= 0),
    -- What the adapter reports: exit code, capped output, previous state.
    result      jsonb       NOT NULL DEFAULT '{}',
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    PRIMARY KEY (run_id, phase, idx)
);

-- A target (e.g. k8s:shop/checkout, gateway:edge/checkout, script:name)
-- is changed by one run at a time.
CREATE TABLE exec_target_lock (
    target     text        PRIMARY KEY,
    run_id     uuid        NOT NULL REFERENCES exec_run (id),
    taken_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE verify_result (
    id          uuid        PRIMARY KEY,
    case_id     uuid        NOT NULL REFERENCES ops_case (id),
    plan_hash   text        NOT NULL CHECK (plan_hash ~ '^[0-9a-f]{64}$'),
    command_id  uuid        NOT NULL UNIQUE,
    case_version bigint     NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('pass', 'breach', 'no_data', 'inconclusive')),
    -- One entry per check: the figure seen, the points behind it, the verdict.
    checks      jsonb       NOT NULL CHECK (jsonb_typeof(checks) = 'array'),
    window_from timestamptz NOT NULL,
    window_to   timestamptz NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX verify_result_by_case ON verify_result (case_id, at DESC);

-- One-minute metric aggregates, ingested over HTTP.
CREATE TABLE metric_1m (
    resource text             NOT NULL CHECK (length(resource) BETWEEN 1 AND 200),
    metric   text             NOT NULL CHECK (length(metric) BETWEEN 1 AND 200),
    ts       timestamptz      NOT NULL CHECK (date_trunc('minute', ts) = ts),
    avg      double precision NOT NULL,
    max      double precision NOT NULL,
    p95      double precision,
    count    integer          NOT NULL DEFAULT 1 CHECK (count >= 1),
    PRIMARY KEY (resource, metric, ts)
);

-- Evidence: envelopes (signals, findings) kept as received, linked to cases.
CREATE TABLE event_envelope (
    id       uuid        PRIMARY KEY,
    type     text        NOT NULL,
    source   text        NOT NULL,
    data     jsonb       NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE evidence_link (
    case_id     uuid        NOT NULL REFERENCES ops_case (id),
    envelope_id uuid        NOT NULL REFERENCES event_envelope (id),
    -- signal: what opened or joined the case; findings: the analyst's summary.
    role        text        NOT NULL CHECK (role IN ('signal', 'findings')),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (case_id, envelope_id)
);
