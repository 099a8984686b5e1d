-- Issue #16, the detector: the analyst judges metric_1m series as their
-- rows arrive, and its detections become signals.

-- One row per series with the newest minute ingested; written by ingest in
-- the statement that stores the rows. The detector finds the series with
-- new minutes here without reading metric_1m.
CREATE TABLE metric_series (
    tenant   text        NOT NULL,
    resource text        NOT NULL,
    metric   text        NOT NULL,
    last_ts  timestamptz NOT NULL,
    PRIMARY KEY (tenant, resource, metric)
);
INSERT INTO metric_series (tenant, resource, metric, last_ts)
SELECT tenant, resource, metric, max(ts) FROM metric_1m GROUP BY 1, 2, 3;

-- The detector's state per series, the analyst's own (a separate row, so
-- ingest never waits on a sweep): minutes judged up to `evaluated_to`
-- (NULL: never), the baseline rule's stored detector (`state`, made under
-- rule `rule`; another rule starts it over), the burn-rate rules firing,
-- and the last judged figures for findings.
CREATE TABLE detector_state (
    tenant       text        NOT NULL,
    resource     text        NOT NULL,
    metric       text        NOT NULL,
    evaluated_to timestamptz,
    rule         text,
    state        bytea,
    burning      text[]      NOT NULL DEFAULT '{}',
    value        float8,
    baseline     float8,
    scale        float8,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, resource, metric),
    FOREIGN KEY (tenant, resource, metric) REFERENCES metric_series ON DELETE CASCADE
);

-- Every detection, stored in the sweep's transaction, then taken through
-- signal intake (`taken_at`, the case it went to): a crash in between
-- retakes it, and intake's one-open-case-per-fingerprint absorbs the twin.
CREATE TABLE anomaly (
    id          uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    resource    text        NOT NULL,
    metric      text        NOT NULL,
    rule        text        NOT NULL,
    fingerprint text        NOT NULL CHECK (length(fingerprint) BETWEEN 1 AND 200),
    status      text        NOT NULL CHECK (status IN ('firing', 'resolved')),
    minute      timestamptz NOT NULL,
    labels      jsonb       NOT NULL CHECK (jsonb_typeof(labels) = 'object'),
    annotations jsonb       NOT NULL CHECK (jsonb_typeof(annotations) = 'object'),
    figures     jsonb       NOT NULL CHECK (jsonb_typeof(figures) = 'object'),
    detected_at timestamptz NOT NULL DEFAULT now(),
    taken_at    timestamptz,
    outcome     text,
    case_id     uuid        REFERENCES ops_case (id)
);
CREATE INDEX anomaly_pending ON anomaly (detected_at) WHERE taken_at IS NULL;
CREATE INDEX anomaly_by_tenant ON anomaly (tenant, detected_at);

ALTER TABLE signal DROP CONSTRAINT signal_source_check;
ALTER TABLE signal ADD CONSTRAINT signal_source_check CHECK (source IN ('alertmanager', 'detector'));
