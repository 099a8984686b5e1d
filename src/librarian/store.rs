//! The librarian's documents in PostgreSQL: ingest (chunk, embed, replace
//! in one transaction; unchanged content is a no-op) and hybrid search
//! (HNSW cosine and full text, fused by reciprocal rank), always within a
//! tenant scope: a tenant's own documents and the global ones.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::chunk::Budget;
use super::embed::{Embedder, pgvector_text};
use crate::auth::TenantScope;
use crate::ids::Tenant;

/// What a document is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DocKind {
    Runbook,
    PastCase,
    Postmortem,
}

/// A document to store.
#[derive(Debug, Clone)]
pub struct NewDoc {
    /// `None`: the global scope, read by every tenant.
    pub tenant: Option<Tenant>,
    pub kind: DocKind,
    pub title: String,
    pub source: String,
    pub body: String,
    pub labels: serde_json::Value,
}

/// A stored document, as `POST /kb/docs` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Ingested {
    pub id: Uuid,
    pub chunks: usize,
    /// The same source with the same content was there already: nothing
    /// was written.
    pub unchanged: bool,
}

fn content_sha256(doc: &NewDoc) -> String {
    let mut h = Sha256::new();
    for part in [doc.title.as_str(), &doc.labels.to_string(), &doc.body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Stores `doc` under its (tenant, kind, source): a new one, a changed one
/// (its chunks replaced in the same transaction), or nothing when the
/// content is unchanged. Embedding happens before the transaction opens.
pub async fn ingest(pool: &PgPool, embedder: &Embedder, doc: &NewDoc) -> anyhow::Result<Ingested> {
    let sha = content_sha256(doc);
    let tenant = doc.tenant.as_ref().map(|t| t.as_str());
    let kind: &'static str = doc.kind.into();
    // Unchanged: the same content, embedded by the same model.
    let existing: Option<(Uuid, String, i64, bool)> = sqlx::query_as(
        "SELECT d.id, d.content_sha256, count(c.ordinal), \
                COALESCE(bool_and(c.embedding_model = $4), true) \
         FROM kb_doc d LEFT JOIN kb_chunk c ON c.doc_id = d.id \
         WHERE d.tenant IS NOT DISTINCT FROM $1 AND d.kind = $2 AND d.source = $3 GROUP BY d.id",
    )
    .bind(tenant)
    .bind(kind)
    .bind(&doc.source)
    .bind(embedder.model_name())
    .fetch_optional(pool)
    .await?;
    if let Some((id, stored, chunks, same_model)) = &existing
        && *stored == sha
        && *same_model
    {
        return Ok(Ingested {
            id: *id,
            chunks: *chunks as usize,
            unchanged: true,
        });
    }
    // The title heads the text when the body does not open with a title
    // (a first-level heading) of its own, so that every chunk's heading
    // path names the document.
    let text = if doc.body.trim_start().starts_with("# ") {
        doc.body.clone()
    } else {
        format!("# {}\n{}", doc.title, doc.body)
    };
    let chunks = embedder.chunk(text, Budget::default()).await?;
    let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    let vectors = embedder.embed(texts.clone()).await?;
    let mut tx = pool.begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO kb_doc (id, tenant, kind, title, source, body, labels, content_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant, kind, source) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body, \
         labels = EXCLUDED.labels, content_sha256 = EXCLUDED.content_sha256, updated_at = now() \
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(kind)
    .bind(&doc.title)
    .bind(&doc.source)
    .bind(&doc.body)
    .bind(&doc.labels)
    .bind(&sha)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM kb_chunk WHERE doc_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let ordinals: Vec<i32> = chunks.iter().map(|c| c.ordinal as i32).collect();
    let embeddings: Vec<String> = vectors.iter().map(|v| pgvector_text(v)).collect();
    sqlx::query(
        "INSERT INTO kb_chunk (doc_id, ordinal, tenant, kind, text, embedding, embedding_model) \
         SELECT $1, o, $2, $3, t, e::vector, $7 FROM unnest($4::int[], $5::text[], $6::text[]) AS u(o, t, e)",
    )
    .bind(id)
    .bind(tenant)
    .bind(kind)
    .bind(&ordinals)
    .bind(&texts)
    .bind(&embeddings)
    .bind(embedder.model_name())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Ingested {
        id,
        chunks: chunks.len(),
        unchanged: false,
    })
}

/// Deletes a document of the scope (its chunks go with it); false when
/// there is none there.
pub async fn delete(
    pool: &PgPool,
    id: Uuid,
    scope: &TenantScope,
    global_too: bool,
) -> Result<bool, sqlx::Error> {
    let gone = sqlx::query(
        "DELETE FROM kb_doc WHERE id = $1 AND ((tenant IS NULL AND $3) \
         OR (tenant IS NOT NULL AND ($2::text[] IS NULL OR tenant = ANY($2))))",
    )
    .bind(id)
    .bind(scope.sql())
    .bind(global_too)
    .execute(pool)
    .await?;
    Ok(gone.rows_affected() == 1)
}

/// How a search ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Vector and full-text candidates fused by reciprocal rank.
    #[default]
    Hybrid,
    Vector,
    Text,
}

/// A search within a scope.
#[derive(Debug, Clone)]
pub struct Search<'a> {
    pub query: &'a str,
    pub k: usize,
    pub kind: Option<DocKind>,
    pub scope: &'a TenantScope,
    pub mode: Mode,
    /// Only documents carrying every one of these labels (e.g. `service`).
    pub labels: BTreeMap<String, String>,
    /// Only documents written or changed since then.
    pub since: Option<DateTime<Utc>>,
}

/// One passage found.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Hit {
    pub doc_id: Uuid,
    pub ordinal: i32,
    pub title: String,
    pub source: String,
    pub kind: String,
    /// The matched passage (the chunk, heading path first).
    pub passage: String,
    /// Reciprocal-rank-fusion score (higher is better; 1/(60 + rank) per
    /// list the passage is in).
    pub score: f64,
    /// Its rank among the vector candidates (1 = nearest), if among them.
    pub vector_rank: Option<i64>,
    /// Its rank among the full-text candidates, if among them.
    pub text_rank: Option<i64>,
    /// The document's labels (a past case's `outcome` among them).
    #[schema(value_type = Object)]
    #[sqlx(json)]
    pub labels: BTreeMap<String, String>,
    /// When the document was last written.
    pub updated_at: DateTime<Utc>,
}

/// Candidates taken from each list before fusion.
const CANDIDATES: i64 = 50;
/// The usual constant of reciprocal rank fusion (Cormack et al., 2009).
const RRF_K: f64 = 60.0;

pub async fn search(
    pool: &PgPool,
    embedder: &Embedder,
    s: &Search<'_>,
) -> anyhow::Result<Vec<Hit>> {
    let vector = if s.mode == Mode::Text {
        None
    } else {
        let mut v = embedder.embed(vec![s.query.to_string()]).await?;
        v.pop().map(|v| pgvector_text(&v))
    };
    let kind: Option<&'static str> = s.kind.map(Into::into);
    // Full text takes any of the query's words (`|`), ranked by how many
    // and how close (`ts_rank_cd`): a question typed at 3 am rarely has
    // all its words in the answer, which `&` would demand.
    let mut tx = pool.begin().await?;
    // A filtered HNSW scan keeps scanning until it has enough rows that
    // pass the filter (pgvector 0.8), instead of filtering its first few;
    // its rows then come in approximate order, so the ranks are numbered
    // after a real sort (`d + 0`: PostgreSQL 17+ would otherwise trust the
    // index's order, as pgvector's README warns).
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
        .execute(&mut *tx)
        .await?;
    let hits: Vec<Hit> = sqlx::query_as(
        "WITH f AS ( \
           SELECT id FROM kb_doc WHERE $9 AND labels @> $10 \
             AND ($11::timestamptz IS NULL OR updated_at >= $11) \
             AND ($3::text IS NULL OR kind = $3) \
             AND (tenant IS NULL OR $2::text[] IS NULL OR tenant = ANY($2))), \
         v AS ( \
           SELECT doc_id, ordinal, row_number() OVER (ORDER BY d + 0, doc_id, ordinal) AS r FROM ( \
             SELECT doc_id, ordinal, embedding <=> $1::vector AS d FROM kb_chunk \
             WHERE $1 IS NOT NULL AND (tenant IS NULL OR $2::text[] IS NULL OR tenant = ANY($2)) \
               AND ($3::text IS NULL OR kind = $3) AND (NOT $9 OR doc_id IN (SELECT id FROM f)) \
               AND embedding_model = $12 \
             ORDER BY embedding <=> $1::vector LIMIT $4) n), \
         t AS ( \
           SELECT doc_id, ordinal, row_number() OVER (ORDER BY rank DESC, doc_id, ordinal) AS r FROM ( \
             SELECT doc_id, ordinal, ts_rank_cd(tsv, q) AS rank \
             FROM kb_chunk, CAST(replace(plainto_tsquery('english', $5)::text, ' & ', ' | ') AS tsquery) q \
             WHERE $6 AND tsv @@ q AND (tenant IS NULL OR $2::text[] IS NULL OR tenant = ANY($2)) \
               AND ($3::text IS NULL OR kind = $3) AND (NOT $9 OR doc_id IN (SELECT id FROM f)) \
             ORDER BY rank DESC, doc_id, ordinal LIMIT $4) m) \
         SELECT c.doc_id, c.ordinal, d.title, d.source, d.kind, c.text AS passage, \
                COALESCE(1.0 / ($7 + v.r), 0) + COALESCE(1.0 / ($7 + t.r), 0) AS score, \
                v.r AS vector_rank, t.r AS text_rank, d.labels, d.updated_at \
         FROM (SELECT doc_id, ordinal FROM v UNION SELECT doc_id, ordinal FROM t) ids \
         JOIN kb_chunk c USING (doc_id, ordinal) JOIN kb_doc d ON d.id = c.doc_id \
         LEFT JOIN v USING (doc_id, ordinal) LEFT JOIN t USING (doc_id, ordinal) \
         ORDER BY score DESC, c.doc_id, c.ordinal LIMIT $8",
    )
    .bind(vector)
    .bind(s.scope.sql())
    .bind(kind)
    .bind(CANDIDATES.max(s.k as i64))
    .bind(s.query)
    .bind(s.mode != Mode::Vector)
    .bind(RRF_K)
    .bind(s.k as i64)
    .bind(!s.labels.is_empty() || s.since.is_some())
    .bind(sqlx::types::Json(&s.labels))
    .bind(s.since)
    .bind(embedder.model_name())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(hits)
}
