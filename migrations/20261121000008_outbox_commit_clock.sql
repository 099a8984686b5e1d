-- Outbox lag is measured from the row's insert, not from the start of its
-- transaction: use the wall clock at insert time.
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
