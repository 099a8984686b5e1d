-- Issue #19: what a plan was based on, which template made it, and which
-- model embedded each chunk.

-- The template a template plan was rendered from: the planner skips a
-- template whose plan failed verification on the same resource lately.
ALTER TABLE plan_proposed ADD COLUMN template text
    CHECK (template IS NULL OR (source = 'template' AND length(template) BETWEEN 1 AND 200));

-- The librarian's passages the LLM was given for this attempt: the query,
-- k, and each passage's id, document, kind, title and score (every
-- attempt of one planning run carries the same retrieval). NULL: no
-- librarian was configured.
ALTER TABLE plan_attempt ADD COLUMN retrieval jsonb
    CHECK (retrieval IS NULL OR jsonb_typeof(retrieval) = 'object');

-- The model that made each chunk's vector (the dimension is the column's,
-- 384): vectors of two models are not comparable, so a search compares
-- only the current model's, and a document embedded by another model is
-- embedded again on its next ingest even when its text is unchanged.
ALTER TABLE kb_chunk ADD COLUMN embedding_model text NOT NULL DEFAULT 'all-MiniLM-L6-v2'
    CHECK (length(embedding_model) BETWEEN 1 AND 200);
ALTER TABLE kb_chunk ALTER COLUMN embedding_model DROP DEFAULT;

-- Recency filters and "what was tried here" read documents by age.
CREATE INDEX kb_doc_by_kind_age ON kb_doc (kind, updated_at DESC);
