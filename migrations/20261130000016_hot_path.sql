-- Issue #15: a transition writes less. Each change is measured in
-- docs/BENCHMARKS.md ("Cuts"); every guarantee stays.

-- 1. An applied idempotent answer is no longer copied into the claim row
-- (1.4 KB of jsonb and an UPDATE per transition). The claim names the
-- timeline entry its transaction writes; a replay rebuilds the answer from
-- that entry (append-only) and the case's columns that never change after
-- insert. The entry keeps the park reason the case took with it, which the
-- rebuilt case needs. Rejections still store their (small) typed answer.
ALTER TABLE idempotency ADD COLUMN timeline_id uuid;
ALTER TABLE case_timeline ADD COLUMN park_reason text;

-- 2. The retention delete walks keys by age, and keys arrive in age order:
-- a BRIN range index serves it, and costs an insert next to nothing.
DROP INDEX idempotency_by_age;
CREATE INDEX idempotency_by_age ON idempotency USING brin (created_at);

-- 3. Outbox rows live until JetStream acks them. No read looks a row up by
-- message id (JetStream deduplicates by Nats-Msg-Id, ids are UUID v7 made
-- by the writer), and every row is written in the transaction that holds
-- its case's row lock, so the case exists: the unique index and the
-- foreign key each cost an index probe per row for nothing read.
ALTER TABLE outbox DROP CONSTRAINT outbox_message_id_key;
ALTER TABLE outbox DROP CONSTRAINT outbox_case_id_fkey;

-- 4. A CHECK constraint runs on every UPDATE of the row, and a transition
-- updates only status, version, park reason and time. The columns fixed at
-- insert are checked when they are written (insert, or an update that sets
-- them) by a trigger, with the same constraint names and SQLSTATE.
ALTER TABLE ops_case
    DROP CONSTRAINT ops_case_tenant_check,
    DROP CONSTRAINT ops_case_title_check,
    DROP CONSTRAINT ops_case_severity_check,
    DROP CONSTRAINT ops_case_kind_check,
    DROP CONSTRAINT ops_case_labels_check;

CREATE FUNCTION ops_case_check_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    failed text;
BEGIN
    IF NEW.tenant !~ '^[a-z0-9][a-z0-9_-]{0,63}$' THEN
        failed := 'ops_case_tenant_check';
    ELSIF NOT length(NEW.title) BETWEEN 1 AND 200 THEN
        failed := 'ops_case_title_check';
    ELSIF NEW.severity NOT IN ('critical', 'high', 'medium', 'low', 'info') THEN
        failed := 'ops_case_severity_check';
    ELSIF NEW.kind !~ '^[a-z0-9][a-z0-9_.-]{0,63}$' THEN
        failed := 'ops_case_kind_check';
    ELSIF jsonb_typeof(NEW.labels) <> 'object' THEN
        failed := 'ops_case_labels_check';
    END IF;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'new row for relation "ops_case" violates check constraint "%"', failed
            USING ERRCODE = 'check_violation', CONSTRAINT = failed, TABLE = 'ops_case';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER ops_case_check_fixed
    BEFORE INSERT OR UPDATE OF tenant, title, severity, kind, labels ON ops_case
    FOR EACH ROW EXECUTE FUNCTION ops_case_check_fixed();
