//! The librarian (issue #19): runbooks, postmortems and past cases with
//! their outcomes, chunked, embedded and searched (pgvector and full text)
//! for the planner and for people. Its role (`worker`) writes a
//! `past_case` document for every case that ends.

pub mod chunk;
pub mod embed;
pub mod import;
pub mod past_case;
pub mod store;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context;

/// Where embeddings come from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EmbeddingSettings {
    /// The embedding model run in this process (all-MiniLM-L6-v2:
    /// config.json, tokenizer.json, model.safetensors; `scripts/model.sh`
    /// fetches it). Without it and without `OPSLOOP_EMBEDDINGS_URL` the
    /// `/kb` routes answer 503, the planner retrieves nothing and the
    /// librarian role cannot start.
    #[arg(
        id = "embeddings_model_dir",
        value_name = "DIR",
        long = "embeddings-model-dir",
        env = "OPSLOOP_EMBEDDINGS_MODEL_DIR"
    )]
    pub model_dir: Option<PathBuf>,
    /// An OpenAI-compatible embeddings API (`http://host/v1` or its
    /// `/embeddings` endpoint), used instead of the local model. It must
    /// answer 384 dimensions (or honour `dimensions`): start-up refuses it
    /// otherwise. `OPENAI_BASE_URL` does not switch embeddings.
    #[arg(
        id = "embeddings_url",
        value_name = "URL",
        long = "embeddings-url",
        env = "OPSLOOP_EMBEDDINGS_URL"
    )]
    pub url: Option<String>,
    /// The model name sent to that API, and recorded with every chunk it
    /// embeds (only vectors of one model are compared). Required with
    /// `OPSLOOP_EMBEDDINGS_URL`: a default could pass another model's
    /// vectors off as the local model's.
    #[arg(
        id = "embeddings_model",
        value_name = "MODEL",
        long = "embeddings-model",
        env = "OPSLOOP_EMBEDDINGS_MODEL"
    )]
    pub model: Option<String>,
    /// Bearer key for that API; empty for servers without auth.
    #[arg(
        id = "embeddings_api_key",
        value_name = "KEY",
        long = "embeddings-api-key",
        env = "OPSLOOP_EMBEDDINGS_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub api_key: String,
    /// Embedding batches at once (local: blocking threads; remote:
    /// requests in flight).
    #[arg(id = "embed_workers",
        value_name = "N", long = "embed-workers", env = "OPSLOOP_EMBED_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
}

enum Source {
    /// The model's folder: loaded on first use.
    Local(PathBuf),
    /// The embedder was made with the librarian (a remote one, or one
    /// already loaded).
    Ready,
    /// An embeddings server that could not be reached at start-up: probed
    /// again on first use.
    Remote {
        url: String,
        model: String,
        api_key: String,
    },
}

/// The librarian as a process holds it: where vectors come from, and the
/// embedder once something needed it (a process that never embeds never
/// loads the model).
pub struct Librarian {
    source: Source,
    workers: usize,
    embedder: tokio::sync::OnceCell<embed::Embedder>,
}

impl Librarian {
    /// Checks that the model's files are there (start-up refuses a folder
    /// without them); loads nothing yet.
    pub fn new(model_dir: PathBuf, workers: usize) -> anyhow::Result<Librarian> {
        for file in ["config.json", "tokenizer.json", "model.safetensors"] {
            let path = model_dir.join(file);
            anyhow::ensure!(
                path.is_file(),
                "the embedding model lacks {} (scripts/model.sh fetches it)",
                path.display()
            );
        }
        Ok(Librarian {
            source: Source::Local(model_dir),
            workers,
            embedder: tokio::sync::OnceCell::new(),
        })
    }

    /// The librarian the settings describe: `None` when neither a model
    /// folder nor a URL is set. A URL is probed now: a server that is
    /// down, or answers another length than 384, stops start-up here.
    pub async fn from_settings(s: &EmbeddingSettings) -> anyhow::Result<Option<Librarian>> {
        let workers = usize::from(s.workers);
        if let Some(url) = s.url.as_deref().filter(|u| !u.is_empty()) {
            let Some(model) = s.model.as_deref().filter(|m| !m.is_empty()) else {
                anyhow::bail!(
                    "OPSLOOP_EMBEDDINGS_URL needs OPSLOOP_EMBEDDINGS_MODEL, the server's model name"
                );
            };
            return match embed::Remote::connect(url, model, &s.api_key).await {
                Ok(remote) => {
                    tracing::info!(model = %model, "Embeddings from an OpenAI-compatible server.");
                    Ok(Some(Librarian::with_embedder(embed::Embedder::remote(
                        remote, workers,
                    ))))
                }
                // A server that is down does not keep the other roles of
                // the process from starting; it is probed again on first
                // use (searches answer 503 meanwhile, the planner plans
                // without passages, past cases wait in the feed).
                Err(embed::ProbeError::Unreachable(why)) => {
                    tracing::warn!(error = %why, "The embeddings server cannot be reached yet; it is asked again on first use.");
                    Ok(Some(Librarian {
                        source: Source::Remote {
                            url: url.to_string(),
                            model: model.to_string(),
                            api_key: s.api_key.clone(),
                        },
                        workers,
                        embedder: tokio::sync::OnceCell::new(),
                    }))
                }
                Err(refused) => Err(anyhow::Error::new(refused).context("OPSLOOP_EMBEDDINGS_URL")),
            };
        }
        match &s.model_dir {
            Some(dir) => Librarian::new(dir.clone(), workers).map(Some),
            None => Ok(None),
        }
    }

    /// A librarian around an embedder made elsewhere (a remote one, or a
    /// model a test or benchmark loaded once for many librarians).
    pub fn with_embedder(embedder: embed::Embedder) -> Librarian {
        Librarian {
            source: Source::Ready,
            workers: 1,
            embedder: tokio::sync::OnceCell::new_with(Some(embedder)),
        }
    }

    /// The embedder; the local model is loaded (on a blocking thread) the
    /// first time.
    pub async fn embedder(&self) -> anyhow::Result<&embed::Embedder> {
        self.embedder
            .get_or_try_init(|| async {
                let dir = match &self.source {
                    Source::Local(dir) => dir,
                    Source::Remote {
                        url,
                        model,
                        api_key,
                    } => {
                        let remote = embed::Remote::connect(url, model, api_key)
                            .await
                            .context("OPSLOOP_EMBEDDINGS_URL")?;
                        return Ok(embed::Embedder::remote(remote, self.workers));
                    }
                    Source::Ready => {
                        anyhow::bail!("a ready librarian holds its embedder from the start")
                    }
                };
                let dir = dir.clone();
                let shown = dir.display().to_string();
                let model = tokio::task::spawn_blocking(move || embed::LocalModel::load(&dir))
                    .await
                    .context("loading the embedding model panicked")??;
                tracing::info!(dir = %shown, "Embedding model loaded.");
                Ok(embed::Embedder::new(model, self.workers))
            })
            .await
    }
}
