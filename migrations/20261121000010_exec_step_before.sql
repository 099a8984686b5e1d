-- What a step was about to change, read before its first try, so an
-- `undo: true` rollback step on the same target can put it back (the pod
-- template before a rollout, a route's weights before a flip). Stored
-- before the change happens: a crash mid-step cannot lose it.
ALTER TABLE exec_step
    ADD COLUMN target text,
    ADD COLUMN before jsonb;
