//! Sentence embeddings for the librarian: all-MiniLM-L6-v2 (384
//! dimensions) run in-process with candle on the CPU, as
//! sentence-transformers runs it (word pieces up to 256, BERT, mean
//! pooling over the real tokens, L2 normalisation), so that a cosine
//! distance is one minus a dot product. The weights are read from a folder
//! (`scripts/model.sh` fetches them); nothing is downloaded here.
//!
//! Embedding is CPU-bound work of tens of milliseconds: it runs on
//! tokio's blocking threads, at most `workers` batches at a time, never
//! on the async executor's threads.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

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

/// The model behind a bounded pool of blocking workers.
#[derive(Clone)]
pub struct Embedder {
    model: Arc<LocalModel>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Embedder {
    pub fn new(model: LocalModel, workers: usize) -> Embedder {
        Embedder {
            model: Arc::new(model),
            permits: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
        }
    }

    pub fn count_tokens(&self, text: &str) -> usize {
        self.model.count_tokens(text)
    }

    /// Embeds `texts` on blocking threads, `BATCH` at a time (a forward
    /// pass holds batch × 12 × 256 × 256 attention scores, several times
    /// over), each batch once a worker is free. The worker's permit goes
    /// with the batch into its thread: a caller that gives up (a timeout,
    /// a client gone) does not free a worker that is still busy.
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
            let model = self.model.clone();
            let batch = batch.to_vec();
            let vectors = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                model.embed_blocking(&batch)
            })
            .await
            .context("an embedding worker panicked")??;
            out.extend(vectors);
        }
        Ok(out)
    }

    /// [`crate::librarian::chunk::chunk`] with this model's word pieces, on a
    /// blocking thread (tokenising a long document is CPU work too).
    pub async fn chunk(
        &self,
        text: String,
        budget: crate::librarian::chunk::Budget,
    ) -> anyhow::Result<Vec<crate::librarian::chunk::Chunk>> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            crate::librarian::chunk::chunk(&text, budget, &|s| model.count_tokens(s))
        })
        .await
        .context("chunking panicked")
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
