-- Plans and approvals: the facts behind the plan_ready and gate_approved guards.
CREATE TABLE plan_proposed (
    -- Insertion order decides which plan is current (timestamps can tie).
    seq                bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                 uuid        PRIMARY KEY,
    case_id            uuid        NOT NULL REFERENCES ops_case (id),
    plan               jsonb       NOT NULL CHECK (jsonb_typeof(plan) = 'object'),
    plan_hash          text        NOT NULL CHECK (plan_hash ~ '^[0-9a-f]{64}$'),
    source             text        NOT NULL CHECK (source IN ('template', 'llm', 'human')),
    author             text        NOT NULL,
    schema_valid       boolean     NOT NULL,
    complete           boolean     NOT NULL,
    -- Distinct human approvers the gate requires for this plan, set by the
    -- gatekeeper; NULL until it has evaluated the plan, and then no person
    -- can open the gate.
    required_approvers smallint    CHECK (required_approvers BETWEEN 1 AND 10),
    -- The gatekeeper's decision: verdict, risk, reasons, auto_rollback.
    gate_decision      jsonb,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (case_id, plan_hash),
    UNIQUE (id, plan_hash)
);
CREATE INDEX plan_proposed_current ON plan_proposed (case_id, seq DESC);

CREATE TABLE plan_approved (
    id         uuid        PRIMARY KEY,
    plan_id    uuid        NOT NULL,
    plan_hash  text        NOT NULL,
    approver   text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('auto', 'human')),
    reasons    jsonb       NOT NULL DEFAULT '[]',
    decided_at timestamptz NOT NULL DEFAULT now(),
    -- An approval names the exact plan content it judged.
    FOREIGN KEY (plan_id, plan_hash) REFERENCES plan_proposed (id, plan_hash),
    UNIQUE (plan_id, approver)
);
