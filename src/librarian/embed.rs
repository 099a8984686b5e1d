//! Sentence embeddings for the librarian: all-MiniLM-L6-v2 (384
//! dimensions) run in-process with candle on the CPU, as
//! sentence-transformers runs it (word pieces up to 256, BERT, mean
//! pooling over the real tokens, L2 normalisation), so that a cosine
//! distance is one minus a dot product. The weights are read from a folder
//! (`scripts/model.sh` fetches them); nothing is downloaded here.
//!
//! Embedding is CPU-bound work of tens of milliseconds: it runs on
//! tokio's blocking threads, at most `workers` batches at a time, never
//! on the async executor's threads. With `OPSLOOP_EMBEDDINGS_URL` an
//! OpenAI-compatible server embeds instead ([`Remote`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The local model's name, as `kb_chunk.embedding_model` records it.
pub const LOCAL_MODEL: &str = "all-MiniLM-L6-v2";

/// The vector length of every embedding the librarian stores.
pub const DIMENSIONS: usize = 384;
/// The model's window in word pieces, [CLS] and [SEP] included.
pub const MAX_TOKENS: usize = 256;

/// The model, loaded once.
pub struct LocalModel {
    model: BertModel,
    /// Truncating to the window and padding a batch to its longest.
    tokenizer: Tokenizer,
    /// The same vocabulary without truncation: for counting.
    counter: Tokenizer,
}

impl LocalModel {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<LocalModel> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .context("config.json is not a BERT configuration")?;
        let counter = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| anyhow!("tokenizer.json: {e}"))?;
        let mut counter = counter;
        counter.with_padding(None);
        counter
            .with_truncation(None)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        let mut tokenizer = counter.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let weights =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DTYPE, &Device::Cpu)?;
        let model = BertModel::load(weights, &config).context("model.safetensors")?;
        Ok(LocalModel {
            model,
            tokenizer,
            counter,
        })
    }

    /// Word pieces of `text`, without [CLS] and [SEP] (the chunker's
    /// counter: a chunk may hold `MAX_TOKENS - 2`).
    pub fn count_tokens(&self, text: &str) -> usize {
        self.counter
            .encode(text, false)
            .map_or(usize::MAX, |e| e.len())
    }

    /// One unit vector per text, in order. Blocking: call it from
    /// [`Embedder`].
    pub fn embed_blocking(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenising: {e}"))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.len());
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings.iter().flat_map(|e| f(e).to_vec()).collect()
        };
        let device = Device::Cpu;
        let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (rows, width), &device)?;
        let types = ids.zeros_like()?;
        let mask = Tensor::from_vec(flat(&|e| e.get_attention_mask()), (rows, width), &device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens only (padding is masked out).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let mean = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

/// Where vectors come from: the model in this process, or an
/// OpenAI-compatible `/v1/embeddings` server.
enum Backend {
    Local(Arc<LocalModel>),
    Remote(Arc<Remote>),
}

/// The embedder behind a bounded pool of workers: local batches run on
/// blocking threads, remote ones are requests in flight; either way at
/// most `workers` at once.
#[derive(Clone)]
pub struct Embedder {
    backend: Arc<Backend>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Embedder {
    pub fn new(model: LocalModel, workers: usize) -> Embedder {
        Embedder::with(Backend::Local(Arc::new(model)), workers)
    }

    pub fn remote(remote: Remote, workers: usize) -> Embedder {
        Embedder::with(Backend::Remote(Arc::new(remote)), workers)
    }

    fn with(backend: Backend, workers: usize) -> Embedder {
        Embedder {
            backend: Arc::new(backend),
            permits: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
        }
    }

    /// The model behind the vectors, recorded with each chunk: only
    /// vectors of the same model are compared.
    pub fn model_name(&self) -> &str {
        match &*self.backend {
            Backend::Local(_) => LOCAL_MODEL,
            Backend::Remote(r) => &r.model,
        }
    }

    pub fn count_tokens(&self, text: &str) -> usize {
        match &*self.backend {
            Backend::Local(model) => model.count_tokens(text),
            Backend::Remote(_) => Remote::estimate_tokens(text),
        }
    }

    /// Embeds `texts`, `BATCH` at a time (a local forward pass holds
    /// batch × 12 × 256 × 256 attention scores, several times over), each
    /// batch once a worker is free. A local batch takes its worker's permit
    /// into its thread: a caller that gives up (a timeout, a client gone)
    /// does not free a worker that is still busy.
    pub async fn embed(&self, texts: Vec<String>) -> anyhow::Result<Vec<Vec<f32>>> {
        const BATCH: usize = 16;
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .context("the embedding pool is closed")?;
            let batch = batch.to_vec();
            let vectors = match &*self.backend {
                Backend::Local(model) => {
                    let model = model.clone();
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        model.embed_blocking(&batch)
                    })
                    .await
                    .context("an embedding worker panicked")??
                }
                Backend::Remote(remote) => {
                    let _permit = permit;
                    remote.embed(&batch).await?
                }
            };
            out.extend(vectors);
        }
        Ok(out)
    }

    /// [`crate::librarian::chunk::chunk`] with this embedder's word pieces,
    /// on a blocking thread (tokenising a long document is CPU work too).
    pub async fn chunk(
        &self,
        text: String,
        budget: crate::librarian::chunk::Budget,
    ) -> anyhow::Result<Vec<crate::librarian::chunk::Chunk>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            crate::librarian::chunk::chunk(&text, budget, &|s| this.count_tokens(s))
        })
        .await
        .context("chunking panicked")
    }
}

/// Why one request to the embeddings server failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the embeddings server cannot be reached: {0}")]
    Transport(String),
    #[error("the embeddings server answered HTTP {0}")]
    Status(u16),
    #[error("the embeddings server's answer is not an embeddings list: {0}")]
    Body(String),
}

/// Why the start-up probe of the embeddings server failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Down, overloaded or failing (connection, 5xx, 429): worth asking
    /// again later.
    #[error("{0}")]
    Unreachable(String),
    /// It answered, and not what opsloop can use (a length other than
    /// 384, a refusal): a configuration error.
    #[error("{0}")]
    Refused(String),
}

impl RequestError {
    fn probe(self, url: &str) -> ProbeError {
        let text = format!("{self} ({url})");
        match self {
            RequestError::Transport(_) => ProbeError::Unreachable(text),
            RequestError::Status(code) if code >= 500 || code == 429 => {
                ProbeError::Unreachable(text)
            }
            RequestError::Status(_) | RequestError::Body(_) => ProbeError::Refused(text),
        }
    }
}

/// An OpenAI-compatible embeddings endpoint (`OPSLOOP_EMBEDDINGS_URL`).
/// Its vectors must have [`DIMENSIONS`] entries: [`Remote::connect`]
/// asks for that many (`dimensions`), and refuses a server that answers
/// with another length, at start-up rather than at the first ingest.
pub struct Remote {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: String,
    /// The server took the `dimensions` parameter (some refuse it with a
    /// 400 and answer their native length).
    send_dimensions: bool,
}

/// `POST /v1/embeddings` as opsloop sends it.
#[derive(serde::Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [String],
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
}

#[derive(serde::Deserialize)]
struct EmbeddingsAnswer {
    data: Vec<EmbeddingItem>,
}

#[derive(serde::Deserialize)]
struct EmbeddingItem {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

impl Remote {
    /// `url` is the API's base (`http://host/v1`) or the endpoint itself
    /// (`…/v1/embeddings`). Sends one probe and checks its length.
    pub async fn connect(url: &str, model: &str, api_key: &str) -> Result<Remote, ProbeError> {
        let url = url.trim_end_matches('/');
        let url = if url.ends_with("/embeddings") {
            url.to_string()
        } else {
            format!("{url}/embeddings")
        };
        let mut remote = Remote {
            http: crate::http_client::http_client()
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| ProbeError::Refused(format!("building the HTTP client: {e}")))?,
            url,
            model: model.to_string(),
            api_key: api_key.to_string(),
            send_dimensions: true,
        };
        let probe = vec!["opsloop embedding probe".to_string()];
        let vectors = match remote.request(&probe).await {
            Ok(v) => v,
            // A 4xx: most likely the `dimensions` parameter; once more
            // without it.
            Err(RequestError::Status(code)) if (400..500).contains(&code) && code != 429 => {
                remote.send_dimensions = false;
                remote
                    .request(&probe)
                    .await
                    .map_err(|e| e.probe(&remote.url))?
            }
            Err(e) => return Err(e.probe(&remote.url)),
        };
        let got = vectors.first().map_or(0, Vec::len);
        if got != DIMENSIONS {
            return Err(ProbeError::Refused(format!(
                "the embeddings server at {} answers {got} dimensions for model {:?}; opsloop stores \
                 {DIMENSIONS} (kb_chunk.embedding) and the server did not honour `dimensions: {DIMENSIONS}`: \
                 use a {DIMENSIONS}-dimension model or unset OPSLOOP_EMBEDDINGS_URL",
                remote.url, remote.model
            )));
        }
        Ok(remote)
    }

    /// Word pieces of a text, estimated without the server's tokenizer:
    /// one per three characters over-counts English word pieces (about
    /// four and a half characters each), so chunks stay inside the
    /// window.
    pub fn estimate_tokens(text: &str) -> usize {
        text.chars().count().div_ceil(3)
    }

    /// Unit vectors of [`DIMENSIONS`], one per text, in order.
    async fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.request(texts)
            .await?
            .into_iter()
            .map(|v| {
                anyhow::ensure!(
                    v.len() == DIMENSIONS,
                    "the embeddings server answered a vector of {} dimensions",
                    v.len()
                );
                // Stored unit length, like the local model's: the cosine
                // distance is then one minus a dot product everywhere.
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                anyhow::ensure!(norm > 0.0, "the embeddings server answered a zero vector");
                Ok(v.into_iter().map(|x| x / norm).collect())
            })
            .collect()
    }

    /// The server's vectors as they come, in the texts' order.
    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, RequestError> {
        let body = EmbeddingsRequest {
            model: &self.model,
            input: texts,
            encoding_format: "float",
            dimensions: self.send_dimensions.then_some(DIMENSIONS),
        };
        let mut request = self.http.post(&self.url).json(&body);
        if !self.api_key.is_empty() {
            request = request.bearer_auth(&self.api_key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| RequestError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(RequestError::Status(status.as_u16()));
        }
        let mut answer: EmbeddingsAnswer = response
            .json()
            .await
            .map_err(|e| RequestError::Body(e.without_url().to_string()))?;
        if answer.data.len() != texts.len() {
            return Err(RequestError::Body(format!(
                "{} vectors for {} texts",
                answer.data.len(),
                texts.len()
            )));
        }
        answer.data.sort_by_key(|d| d.index);
        Ok(answer.data.into_iter().map(|d| d.embedding).collect())
    }
}

/// A vector as pgvector's text input (`[0.1,0.2,…]`), bound as text and
/// cast in SQL: no client-side vector type needed.
pub fn pgvector_text(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 11 + 2);
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}
