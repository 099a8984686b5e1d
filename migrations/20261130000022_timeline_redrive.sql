-- Issue #17, re-drive: an operator re-issues the command of a case's
-- current status (a plan, a gate evaluation, an execution of the approved
-- plan, a verification), and the timeline records who did, at the case's
-- version: a `redrive` entry changes no status (from = to), names no FSM
-- event, and is not a version of the case.
CREATE OR REPLACE FUNCTION case_timeline_valid(kind text, event text, from_status text, to_status text,
                                               version bigint, rejection_code text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce(kind IN ('created', 'transition', 'rejected', 'redrive'), true)
       AND coalesce(event IN ('start_analysis', 'analysis_done', 'plan_ready', 'plan_failed',
                              'gate_approved', 'gate_rejected', 'exec_done', 'exec_failed',
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

-- Each version of a case is still produced exactly once; re-drives and
-- rejections sit at the version they saw.
DROP INDEX case_timeline_one_entry_per_version;
CREATE UNIQUE INDEX case_timeline_one_entry_per_version
    ON case_timeline (case_id, version) WHERE kind IN ('created', 'transition');
