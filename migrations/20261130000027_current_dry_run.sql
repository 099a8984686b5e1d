-- Issue #17, after review: which dry run of a plan counts is the
-- orchestrator's decision, not the newest row's. `dryrun_digest` is set in
-- the transaction that accepts `dryrun_done` / `dryrun_failed` for the
-- plan; a rehearsal whose fact came too late (the case moved on, or a
-- second dry run of the same version) is kept for the record and never
-- becomes current, so it voids no votes. `gate_dryrun_digest` is the dry
-- run the gatekeeper's latest decision judged: its quorum holds for that
-- dry run only.
ALTER TABLE plan_proposed
    ADD COLUMN dryrun_digest text
        CHECK (length(dryrun_digest) = 64 AND dryrun_digest !~ '[^0-9a-f]'),
    ADD COLUMN gate_dryrun_digest text
        CHECK (length(gate_dryrun_digest) = 64 AND gate_dryrun_digest !~ '[^0-9a-f]');

ALTER TABLE gate_decision
    ADD CONSTRAINT gate_decision_dryrun_digest_check
        CHECK (length(dryrun_digest) = 64 AND dryrun_digest !~ '[^0-9a-f]');

-- A dry run belongs to its plan's case.
ALTER TABLE plan_dryrun
    ADD CONSTRAINT plan_dryrun_case_fkey FOREIGN KEY (case_id) REFERENCES ops_case (id);

-- Databases that ran migration 26: the newest accepted dry run of each
-- plan, and the digest of each plan's latest gate decision.
UPDATE plan_proposed p SET dryrun_digest = d.digest
FROM (SELECT DISTINCT ON (r.plan_id) r.plan_id, r.digest
      FROM plan_dryrun r
      WHERE EXISTS (SELECT 1 FROM case_timeline t
                    WHERE t.case_id = r.case_id AND t.kind = 'transition'
                      AND t.event IN ('dryrun_done', 'dryrun_failed')
                      AND t.meta #>> '{facts,dryrun,digest}' = r.digest)
      ORDER BY r.plan_id, r.seq DESC) d
WHERE d.plan_id = p.id;

UPDATE plan_proposed p SET gate_dryrun_digest = g.dryrun_digest
FROM (SELECT DISTINCT ON (plan_id) plan_id, dryrun_digest
      FROM gate_decision ORDER BY plan_id, decided_at DESC NULLS LAST) g
WHERE g.plan_id = p.id;
