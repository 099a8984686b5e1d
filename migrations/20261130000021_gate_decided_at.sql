-- Issue #17, provenance: when the gatekeeper decided on a plan. Decisions
-- recorded before stay without a time (the chain places them right after
-- their plan) rather than get a guessed one.
ALTER TABLE plan_proposed ADD COLUMN gate_decided_at timestamptz;
