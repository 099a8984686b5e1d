-- Metrics belong to a tenant (issue #13): verification and analysis read
-- the case's tenant's rows only, and an ingest may write only the tenants
-- its token acts for. Rows stored before tenants existed keep working as
-- the `default` tenant's.
ALTER TABLE metric_1m
    ADD COLUMN tenant text NOT NULL DEFAULT 'default'
        CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}'::jsonb;
-- New rows name their tenant; only the migrated ones took the default.
ALTER TABLE metric_1m ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE metric_1m DROP CONSTRAINT metric_1m_pkey;
ALTER TABLE metric_1m ADD PRIMARY KEY (tenant, resource, metric, ts);

-- A message whose envelope names another tenant than its case's is
-- dead-lettered as such.
ALTER TABLE dead_letter DROP CONSTRAINT dead_letter_reason_check;
ALTER TABLE dead_letter ADD CONSTRAINT dead_letter_reason_check CHECK (reason IN (
    'malformed_envelope', 'subject_mismatch', 'unknown_type', 'unknown_case',
    'tenant_mismatch', 'invalid_data', 'max_deliver_exceeded'));
