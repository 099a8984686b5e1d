-- Issue #19: what a plan was based on, and which template made it.

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

-- Recency filters and "what was tried here" read documents by age.
CREATE INDEX kb_doc_by_kind_age ON kb_doc (kind, updated_at DESC);
