-- Ingest now gives a new series its detector state row in the statement
-- that stores its first rows; sweeps no longer look for series without
-- one. Series stored before get theirs here.
INSERT INTO detector_state (tenant, resource, metric)
SELECT tenant, resource, metric FROM metric_series
ON CONFLICT DO NOTHING;
