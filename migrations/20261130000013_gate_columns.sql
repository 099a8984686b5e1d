-- The gate's decision in real columns instead of a JSON blob read back by
-- key, and whether a plan has rollback steps, set from the typed plan when
-- it is proposed (so no reader re-interprets the plan's JSON in SQL).
ALTER TABLE plan_proposed
    ADD COLUMN has_rollback       boolean NOT NULL DEFAULT false,
    ADD COLUMN gate_verdict       text CHECK (gate_verdict IN
                                      ('auto_approve', 'require_approvers', 'break_glass', 'deny')),
    ADD COLUMN gate_risk          double precision CHECK (gate_risk BETWEEN 0 AND 1),
    ADD COLUMN gate_reasons       text[],
    -- The change freeze a break-glass verdict was given in.
    ADD COLUMN gate_freeze        text,
    -- Whether the policy in force let a failed verification roll back
    -- without a person.
    ADD COLUMN gate_auto_rollback boolean,
    ADD CONSTRAINT plan_proposed_gate_whole CHECK (
        (gate_verdict IS NULL) = (gate_risk IS NULL)
        AND (gate_verdict IS NULL) = (gate_reasons IS NULL)
        AND (gate_verdict IS NULL) = (gate_auto_rollback IS NULL)
        AND (gate_freeze IS NULL OR gate_verdict = 'break_glass'));

-- Backfill: decisions recorded before this migration, and the rollback
-- steps of plans stored before it (the last time SQL reads a plan's JSON).
UPDATE plan_proposed SET
    gate_verdict       = gate_decision->>'verdict',
    gate_risk          = (gate_decision->>'risk')::double precision,
    gate_reasons       = ARRAY(SELECT jsonb_array_elements_text(gate_decision->'reasons')),
    gate_freeze        = gate_decision->>'freeze',
    gate_auto_rollback = COALESCE((gate_decision->>'auto_rollback')::boolean, false)
WHERE gate_decision IS NOT NULL;

-- CASE, not AND: PostgreSQL may evaluate AND's operands in any order, and
-- jsonb_array_length fails on a non-array.
UPDATE plan_proposed SET has_rollback = true
WHERE CASE WHEN jsonb_typeof(plan #> '{rollback,steps}') = 'array'
           THEN jsonb_array_length(plan #> '{rollback,steps}') > 0
           ELSE false END;

COMMENT ON COLUMN plan_proposed.gate_decision IS
    'Superseded by the gate_* columns (migration 13); no longer written or read.';
