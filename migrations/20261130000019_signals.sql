-- Issue #16, first step: signals from Alertmanager open cases.

-- One row per (tenant, fingerprint, case): the alert that opened or joined
-- a case, with how many notifications it sent. Intake serialises on the
-- (tenant, fingerprint) pair (a transaction-scoped advisory lock) and
-- joins the newest row whose case is not CLOSED, so one alert keeps one
-- open case however many webhooks carry it at once.
CREATE TABLE signal (
    id            uuid        PRIMARY KEY,
    tenant        text        NOT NULL,
    source        text        NOT NULL CHECK (source IN ('alertmanager')),
    fingerprint   text        NOT NULL CHECK (length(fingerprint) BETWEEN 1 AND 200),
    case_id       uuid        NOT NULL REFERENCES ops_case (id),
    status        text        NOT NULL CHECK (status IN ('firing', 'resolved')),
    group_key     text,
    notifications integer     NOT NULL DEFAULT 1 CHECK (notifications >= 1),
    first_at      timestamptz NOT NULL DEFAULT now(),
    last_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, fingerprint, case_id)
);
CREATE INDEX signal_by_case ON signal (case_id);

-- Evidence is kept per tenant (issue #16 asks for it; rows before are the
-- analyst's findings, whose tenant is their case's).
ALTER TABLE event_envelope ADD COLUMN tenant text;
UPDATE event_envelope e SET tenant = c.tenant
FROM evidence_link l JOIN ops_case c ON c.id = l.case_id
WHERE l.envelope_id = e.id;

-- The compact idempotent answer of migration 16 rebuilds a case from its
-- columns fixed at insert: they are now refused if changed, not only
-- checked when written.
CREATE OR REPLACE FUNCTION ops_case_check_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    failed text;
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.tenant, NEW.title, NEW.severity, NEW.kind, NEW.labels)
                  IS DISTINCT FROM (OLD.tenant, OLD.title, OLD.severity, OLD.kind, OLD.labels) THEN
        RAISE EXCEPTION 'a case''s tenant, title, severity, kind and labels are fixed at creation'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ops_case_fixed', TABLE = 'ops_case';
    END IF;
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
