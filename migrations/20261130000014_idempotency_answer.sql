-- An idempotent request's answer is kept as the typed outcome the API
-- renders (the orchestrator speaks no HTTP). Rows written before keep the
-- rendered reply in response_status / response_body and are replayed as
-- such until they expire.
ALTER TABLE idempotency
    ADD COLUMN answer jsonb,
    ADD CONSTRAINT idempotency_one_answer CHECK (answer IS NULL OR response_status IS NULL);
