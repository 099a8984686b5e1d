-- Issue #17, provenance: every gate decision kept as a row of its own. The
-- plan's gate_* columns hold the latest decision (what the guards and the
-- executor read); a re-evaluated plan (a re-driven /gate/eval) used to
-- lose the earlier one from the record.
CREATE TABLE gate_decision (
    id                 uuid             PRIMARY KEY,
    plan_id            uuid             NOT NULL,
    plan_hash          text             NOT NULL,
    verdict            text             NOT NULL
                       CHECK (verdict IN ('auto_approve', 'require_approvers', 'break_glass', 'deny')),
    risk               double precision NOT NULL CHECK (risk BETWEEN 0 AND 1),
    reasons            text[]           NOT NULL,
    required_approvers smallint,
    freeze_name        text,
    auto_rollback      boolean          NOT NULL,
    -- NULL for decisions recorded before their time was (migration 21).
    decided_at         timestamptz,
    FOREIGN KEY (plan_id, plan_hash) REFERENCES plan_proposed (id, plan_hash)
);
CREATE INDEX gate_decision_by_plan ON gate_decision (plan_id, decided_at);

INSERT INTO gate_decision (id, plan_id, plan_hash, verdict, risk, reasons, required_approvers,
                           freeze_name, auto_rollback, decided_at)
SELECT gen_random_uuid(), id, plan_hash, gate_verdict, gate_risk, gate_reasons, required_approvers,
       gate_freeze, gate_auto_rollback, gate_decided_at
FROM plan_proposed WHERE gate_verdict IS NOT NULL;
