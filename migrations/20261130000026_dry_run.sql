-- Issue #17, dry run before the gate: the executor rehearses the current
-- plan (Kubernetes server-side dryRun=All, the gateway's current weights
-- against the target ones, scripts through their declared dry-run flag)
-- and keeps what it saw here, with the plan. The digest (SHA-256 of the
-- plan hash, outcome and artefact) is what an approval binds to next to
-- the plan hash.
CREATE TABLE plan_dryrun (
    -- Insertion order decides which dry run of a plan is current.
    seq        bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    id         uuid        PRIMARY KEY,
    case_id    uuid        NOT NULL,
    plan_id    uuid        NOT NULL,
    plan_hash  text        NOT NULL,
    digest     text        NOT NULL CHECK (length(digest) = 64 AND digest !~ '[^0-9a-f]'),
    outcome    text        NOT NULL CHECK (outcome IN ('ok', 'failed', 'unavailable')),
    artefact   jsonb       NOT NULL CHECK (jsonb_typeof(artefact) = 'object'),
    -- The cmd.exec.dryrun envelope id: a redelivered command finds its row.
    attempt_id uuid        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (plan_id, plan_hash) REFERENCES plan_proposed (id, plan_hash)
);
CREATE INDEX plan_dryrun_current ON plan_dryrun (plan_id, seq DESC);
CREATE INDEX plan_dryrun_by_case ON plan_dryrun (case_id, seq);

-- An approval names the dry run it judged besides the plan hash (NULL for
-- plans that had none: those approved before dry runs existed). A person
-- may approve again after a new dry run voided the earlier vote, so the
-- same approver may appear once per digest.
ALTER TABLE plan_approved
    ADD COLUMN dryrun_digest text CHECK (length(dryrun_digest) = 64 AND dryrun_digest !~ '[^0-9a-f]'),
    DROP CONSTRAINT plan_approved_plan_id_approver_key,
    ADD CONSTRAINT plan_approved_once_per_dryrun UNIQUE NULLS NOT DISTINCT (plan_id, approver, dryrun_digest);

-- The gate decision records which dry run it judged.
ALTER TABLE gate_decision ADD COLUMN dryrun_digest text;

-- The timeline's events: the dry run's two, and `gate_vote` (issue #18:
-- a person's approval that counts but does not meet the quorum yet is an
-- accepted WAIT_GATE -> WAIT_GATE move, no longer a rejected gate_approved).
CREATE OR REPLACE FUNCTION case_timeline_valid(kind text, event text, from_status text, to_status text,
                                               version bigint, rejection_code text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce(kind IN ('created', 'transition', 'rejected', 'redrive'), true)
       AND coalesce(event IN ('start_analysis', 'analysis_done', 'plan_ready', 'plan_failed',
                              'dryrun_done', 'dryrun_failed',
                              'gate_approved', 'gate_rejected', 'gate_vote',
                              'exec_done', 'exec_failed',
                              'verify_pass', 'verify_failed', 'resume', 'dismiss'), true)
       AND coalesce(from_status IN ('NEW', 'ANALYZING', 'PLANNING', 'WAIT_GATE', 'EXECUTING',
                                    'VERIFYING', 'CLOSED', 'PARKED'), true)
       AND coalesce(to_status IN ('NEW', 'ANALYZING', 'PLANNING', 'WAIT_GATE', 'EXECUTING',
                                  'VERIFYING', 'CLOSED', 'PARKED'), true)
       AND coalesce(version >= 1, true)
       AND coalesce((kind IN ('created', 'redrive')) = (event IS NULL), true)
       AND coalesce((kind = 'rejected') = (rejection_code IS NOT NULL), true)
       AND coalesce((kind = 'rejected') = (to_status IS NULL) OR kind = 'created', true)
       AND coalesce(kind <> 'redrive' OR (from_status = to_status), true);
END
$$;
