-- Issue #19: the librarian's documents and their chunks.
CREATE EXTENSION IF NOT EXISTS vector;

-- A runbook, a postmortem or a past case. `tenant` NULL is the shared
-- global scope (shipped runbooks): every tenant reads those, and only its
-- own besides (no tenant name can stand for "global": a NULL is none).
CREATE TABLE kb_doc (
    id             uuid        PRIMARY KEY,
    tenant         text,
    kind           text        NOT NULL CHECK (kind IN ('runbook', 'past_case', 'postmortem')),
    title          text        NOT NULL CHECK (length(title) BETWEEN 1 AND 300),
    -- Where it came from (a file, a URL, `case:<id>`): the document's name
    -- within its tenant and kind; ingesting the same source again replaces
    -- it, or does nothing when its content is unchanged.
    source         text        NOT NULL CHECK (length(source) BETWEEN 1 AND 2000),
    body           text        NOT NULL,
    labels         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    content_sha256 text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (tenant, kind, source)
);

-- One passage of a document, as embedded (384 dimensions,
-- all-MiniLM-L6-v2, unit length) and as searched by words. The tenant and
-- kind are the document's, copied so that a search filters without a join.
CREATE TABLE kb_chunk (
    doc_id    uuid        NOT NULL REFERENCES kb_doc (id) ON DELETE CASCADE,
    ordinal   integer     NOT NULL CHECK (ordinal >= 0),
    tenant    text,
    kind      text        NOT NULL,
    text      text        NOT NULL,
    embedding vector(384) NOT NULL,
    tsv       tsvector    GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (doc_id, ordinal)
);
CREATE INDEX kb_chunk_embedding ON kb_chunk USING hnsw (embedding vector_cosine_ops);
CREATE INDEX kb_chunk_words ON kb_chunk USING gin (tsv);
