//! bench_librarian: the librarian's retrieval quality, embedding speed and
//! search at scale (issue #19).
//!
//! 1. **Quality** on the frozen set in `tests/fixtures/kb-eval/` (the
//!    shipped runbooks, its past cases and distractors, ingested into a
//!    fresh database through `librarian::store::ingest`): recall@1,
//!    recall@5 and MRR (first relevant document within the top 10) for
//!    vector-only, full-text-only and hybrid search. Documents are ranked
//!    by their best passage.
//! 2. **Embedding throughput**: the corpus's chunks through the model, in
//!    the service's batches, on this machine; the process's RSS before the
//!    model was loaded and after.
//! 3. **Search at scale** (`--scale 10000,100000`): synthetic clustered unit
//!    vectors in `kb_chunk` with its HNSW index; p50/p99 of k = 5 searches
//!    through the index against exact search (a sequential scan) in the
//!    same run, and the index's recall@10 against the exact answer.
//!
//! ```sh
//! cargo build --release --bin bench_librarian
//! OPSLOOP_EMBEDDINGS_MODEL_DIR=$(bash scripts/model.sh) \
//!   target/release/bench_librarian [--scale 10000,100000] [--queries 200]
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use opsloop::auth::TenantScope;
use opsloop::librarian::embed::{Embedder, LocalModel, pgvector_text};
use opsloop::librarian::store::{self, DocKind, Mode, NewDoc, Search};
use serde::Deserialize;

mod common;

use common::{arg, fresh_database, ms, quantile};

#[derive(Deserialize)]
struct Doc {
    id: String,
    title: String,
    body: String,
}

#[derive(Deserialize)]
struct Question {
    q: String,
    relevant: Vec<String>,
}

fn jsonl<T: for<'de> Deserialize<'de>>(path: &str) -> anyhow::Result<Vec<T>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{path}: {l}")))
        .collect()
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Default)]
struct Scores {
    at1: usize,
    at5: usize,
    rr: f64,
}

async fn quality(pool: &sqlx::PgPool, e: &Embedder, dir: &str) -> anyhow::Result<()> {
    let mut docs: Vec<(DocKind, String, Doc)> = Vec::new();
    let mut runbooks: Vec<_> = std::fs::read_dir("runbooks")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| {
            !p.file_stem()
                .is_some_and(|s| s.eq_ignore_ascii_case("readme"))
        })
        .collect();
    runbooks.sort();
    for path in runbooks {
        let body = std::fs::read_to_string(&path)?;
        let title = body
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .unwrap_or("runbook")
            .to_string();
        let id = format!("runbooks/{}", path.file_name().unwrap().to_string_lossy());
        docs.push((DocKind::Runbook, id.clone(), Doc { id, title, body }));
    }
    for d in jsonl::<Doc>(&format!("{dir}/past_cases.jsonl"))? {
        docs.push((DocKind::PastCase, d.id.clone(), d));
    }
    for d in jsonl::<Doc>(&format!("{dir}/distractors.jsonl"))? {
        docs.push((DocKind::Postmortem, d.id.clone(), d));
    }
    let questions: Vec<Question> = jsonl(&format!("{dir}/questions.jsonl"))?;
    let started = Instant::now();
    let mut chunks = 0;
    for (kind, source, d) in &docs {
        let stored = store::ingest(
            pool,
            e,
            &NewDoc {
                tenant: None,
                kind: *kind,
                title: d.title.clone(),
                source: source.clone(),
                body: d.body.clone(),
                labels: serde_json::json!({}),
            },
        )
        .await?;
        chunks += stored.chunks;
    }
    println!(
        "corpus: {} documents ({} chunks) ingested in {:.1} s; {} questions",
        docs.len(),
        chunks,
        started.elapsed().as_secs_f64(),
        questions.len()
    );
    let scope = TenantScope::All;
    println!("| mode | recall@1 | recall@5 | MRR (top 10) |");
    println!("|---|---:|---:|---:|");
    for (name, mode) in [
        ("vector", Mode::Vector),
        ("full text", Mode::Text),
        ("hybrid", Mode::Hybrid),
    ] {
        let mut s = Scores::default();
        for q in &questions {
            let hits = store::search(
                pool,
                e,
                &Search {
                    query: &q.q,
                    k: 50,
                    kind: None,
                    scope: &scope,
                    mode,
                    labels: Default::default(),
                    since: None,
                },
            )
            .await?;
            // Documents in the order of their best passage.
            let mut seen = HashSet::new();
            let ranked: Vec<&str> = hits
                .iter()
                .map(|h| h.source.as_str())
                .filter(|s| seen.insert(*s))
                .take(10)
                .collect();
            if let Some(pos) = ranked
                .iter()
                .position(|s| q.relevant.iter().any(|r| r == s))
            {
                s.at1 += usize::from(pos == 0);
                s.at5 += usize::from(pos < 5);
                s.rr += 1.0 / (pos + 1) as f64;
            }
        }
        let n = questions.len() as f64;
        println!(
            "| {name} | {:.2} | {:.2} | {:.3} |",
            s.at1 as f64 / n,
            s.at5 as f64 / n,
            s.rr / n
        );
    }
    println!("(targets for hybrid: recall@5 >= 0.9, MRR >= 0.75)");
    Ok(())
}

async fn throughput(e: &Embedder, texts: Vec<String>) -> anyhow::Result<()> {
    let n = texts.len();
    let started = Instant::now();
    e.embed(texts).await?;
    let took = started.elapsed();
    println!(
        "embedding: {n} chunks in {:.2} s = {:.1} chunks/s (batches of 16, 1 worker)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}

/// A deterministic generator (no dependency): xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A synthetic passage vector: sentence embeddings have a low intrinsic
/// dimension (topics), so the points are drawn around 500 topic centres in
/// a 16-dimensional space and mapped into 384 dimensions by one fixed
/// random matrix, then normalised. (Uniform noise in 384 dimensions, where
/// every point is about as far from every other, is not what a search
/// index meets, and no index finds "nearest" there.)
struct Synthetic {
    rng: Rng,
    centres: Vec<Vec<f32>>,
    projection: Vec<Vec<f32>>,
}

impl Synthetic {
    fn new() -> Synthetic {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let centres = (0..500)
            .map(|_| (0..16).map(|_| rng.next()).collect())
            .collect();
        let projection = (0..384)
            .map(|_| (0..16).map(|_| rng.next()).collect())
            .collect();
        Synthetic {
            rng,
            centres,
            projection,
        }
    }

    fn vector(&mut self) -> Vec<f32> {
        let c = (self.rng.next().abs() * 499.0) as usize;
        let z: Vec<f32> = self.centres[c]
            .iter()
            .map(|x| x + 0.3 * self.rng.next())
            .collect();
        let mut v: Vec<f32> = self
            .projection
            .iter()
            .map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum())
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

async fn scale(url: &str, sizes: &[usize], queries: usize) -> anyhow::Result<()> {
    let pool = opsloop::config::connect_db(url, 4).await?;
    let mut synthetic = Synthetic::new();
    println!(
        "| chunks | index build | HNSW p50 / p99 | exact p50 / p99 | speed-up (p50) | HNSW recall@10 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &size in sizes {
        sqlx::query("TRUNCATE kb_doc CASCADE")
            .execute(&pool)
            .await?;
        sqlx::query("DROP INDEX IF EXISTS kb_chunk_embedding")
            .execute(&pool)
            .await?;
        let doc = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO kb_doc (id, tenant, kind, title, source, body, content_sha256) \
             VALUES ($1, 't-001', 'runbook', 'synthetic', 'synthetic', '', '')",
        )
        .bind(doc)
        .execute(&pool)
        .await?;
        for start in (0..size).step_by(2000) {
            let n = 2000.min(size - start);
            let ordinals: Vec<i32> = (start..start + n).map(|i| i as i32).collect();
            let vectors: Vec<String> = (0..n).map(|_| pgvector_text(&synthetic.vector())).collect();
            sqlx::query(
                "INSERT INTO kb_chunk (doc_id, ordinal, tenant, kind, text, embedding, embedding_model) \
                 SELECT $1, o, 't-001', 'runbook', 'synthetic', e::vector, 'synthetic' \
                 FROM unnest($2::int[], $3::text[]) AS u(o, e)",
            )
            .bind(doc)
            .bind(&ordinals)
            .bind(&vectors)
            .execute(&pool)
            .await?;
        }
        let built = Instant::now();
        let mut conn = pool.acquire().await?;
        sqlx::query("SET maintenance_work_mem = '1GB'")
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "CREATE INDEX kb_chunk_embedding ON kb_chunk USING hnsw (embedding vector_cosine_ops)",
        )
        .execute(&mut *conn)
        .await?;
        let build = built.elapsed();
        sqlx::query("ANALYZE kb_chunk").execute(&mut *conn).await?;
        let (mut hnsw, mut exact) = (Vec::new(), Vec::new());
        let mut found = 0usize;
        for _ in 0..queries {
            let q = pgvector_text(&synthetic.vector());
            let pool = &pool;
            let search = |exact: bool| {
                let q = q.clone();
                async move {
                    let mut tx = pool.begin().await?;
                    if exact {
                        sqlx::query("SET LOCAL enable_indexscan = off")
                            .execute(&mut *tx)
                            .await?;
                    } else {
                        sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
                            .execute(&mut *tx)
                            .await?;
                    }
                    let started = Instant::now();
                    let ids: Vec<i32> = sqlx::query_scalar(
                        "SELECT ordinal FROM kb_chunk WHERE tenant = 't-001' \
                         ORDER BY embedding <=> $1::vector LIMIT 10",
                    )
                    .bind(&q)
                    .fetch_all(&mut *tx)
                    .await?;
                    let took = started.elapsed();
                    tx.commit().await?;
                    anyhow::Ok((took, ids))
                }
            };
            let (t_index, by_index) = search(false).await?;
            let (t_exact, truth) = search(true).await?;
            hnsw.push(t_index);
            exact.push(t_exact);
            found += by_index.iter().filter(|i| truth.contains(i)).count();
        }
        hnsw.sort();
        exact.sort();
        let p = |v: &[Duration], q: f64| ms(quantile(v, q));
        println!(
            "| {size} | {:.1} s | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1}x | {:.3} |",
            build.as_secs_f64(),
            p(&hnsw, 0.5),
            p(&hnsw, 0.99),
            p(&exact, 0.5),
            p(&exact, 0.99),
            p(&exact, 0.5) / p(&hnsw, 0.5).max(1e-9),
            found as f64 / (queries * 10) as f64
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = arg("--eval").unwrap_or_else(|| "tests/fixtures/kb-eval".into());
    let queries: usize = arg("--queries").map_or(Ok(200), |s| s.parse())?;
    let sizes: Vec<usize> = arg("--scale")
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse())
                .collect::<Result<_, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let model_dir = std::env::var("OPSLOOP_EMBEDDINGS_MODEL_DIR")
        .context("OPSLOOP_EMBEDDINGS_MODEL_DIR (bash scripts/model.sh prints it)")?;
    let url = fresh_database("opsloop_librarian").await?;
    let pool = opsloop::config::connect_db(&url, 4).await?;
    opsloop::MIGRATOR.run(&pool).await?;

    let before = rss_mb();
    let e = Embedder::new(LocalModel::load(std::path::Path::new(&model_dir))?, 1);
    e.embed(vec!["warm up".into()]).await?;
    println!(
        "RSS: {before:.0} MB before the model, {:.0} MB with it loaded and used once",
        rss_mb()
    );
    quality(&pool, &e, &dir).await?;
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT text FROM kb_chunk ORDER BY doc_id, ordinal")
            .fetch_all(&pool)
            .await?;
    throughput(&e, texts).await?;
    println!("RSS after embedding the corpus: {:.0} MB", rss_mb());
    if !sizes.is_empty() {
        scale(&url, &sizes, queries).await?;
    }
    Ok(())
}
