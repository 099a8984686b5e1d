-- Issue #21: how each LLM request asked for JSON (the output mode), and
-- requests not sent because the prompt left no room for an answer.
ALTER TABLE plan_attempt ADD COLUMN output_mode text;
UPDATE plan_attempt SET output_mode = CASE WHEN structured_output THEN 'json_schema' ELSE 'prompt' END;
ALTER TABLE plan_attempt
    ALTER COLUMN output_mode SET NOT NULL,
    ADD CONSTRAINT plan_attempt_output_mode_check
        CHECK (output_mode IN ('json_schema', 'json_object', 'prompt')),
    DROP CONSTRAINT plan_attempt_outcome_check,
    ADD CONSTRAINT plan_attempt_outcome_check
        CHECK (outcome IN ('valid', 'invalid', 'timeout', 'http_error', 'garbage', 'context_exceeded'));
