-- Issue #20: `replan`, the orchestrator's automatic PARKED -> PLANNING
-- after a failed verification was rolled back (DESIGN §2).
CREATE OR REPLACE FUNCTION case_timeline_valid(kind text, event text, from_status text, to_status text,
                                               version bigint, rejection_code text)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce(kind IN ('created', 'transition', 'rejected', 'redrive'), true)
       AND coalesce(event IN ('start_analysis', 'analysis_done', 'plan_ready', 'plan_failed',
                              'dryrun_done', 'dryrun_failed',
                              'gate_approved', 'gate_rejected', 'gate_vote',
                              'exec_done', 'exec_failed',
                              'verify_pass', 'verify_failed', 'resume', 'dismiss', 'replan'), true)
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
