-- Cases: the only row whose status the orchestrator changes.
CREATE TABLE ops_case (
    id             uuid        PRIMARY KEY,
    tenant         text        NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    title          text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    severity       text        NOT NULL DEFAULT 'medium'
                               CHECK (severity IN ('critical', 'high', 'medium', 'low', 'info')),
    kind           text        CHECK (kind ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    labels         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    status         text        NOT NULL DEFAULT 'NEW'
                               CHECK (status IN ('NEW', 'ANALYZING', 'PLANNING', 'WAIT_GATE',
                                                 'EXECUTING', 'VERIFYING', 'CLOSED', 'PARKED')),
    version        bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    park_reason    text,
    correlation_id uuid        NOT NULL,
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Listing is newest first by id (UUID v7 is time-ordered), optionally filtered.
CREATE INDEX ops_case_by_status ON ops_case (status, id DESC);
CREATE INDEX ops_case_by_tenant ON ops_case (tenant, status, id DESC);
