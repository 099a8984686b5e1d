//! The librarian (issue #19): runbooks, postmortems and past cases with
//! their outcomes, chunked, embedded and searched (pgvector and full text)
//! for the planner and for people.

pub mod chunk;
pub mod embed;
pub mod store;

use std::path::PathBuf;

use anyhow::Context;

/// The librarian as a process holds it: where the model is, and the model
/// once something needed it (a process that never embeds never loads it).
pub struct Librarian {
    model_dir: PathBuf,
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
            model_dir,
            workers,
            embedder: tokio::sync::OnceCell::new(),
        })
    }

    /// The model, loaded (on a blocking thread) the first time.
    pub async fn embedder(&self) -> anyhow::Result<&embed::Embedder> {
        self.embedder
            .get_or_try_init(|| async {
                let dir = self.model_dir.clone();
                let model = tokio::task::spawn_blocking(move || embed::LocalModel::load(&dir))
                    .await
                    .context("loading the embedding model panicked")??;
                tracing::info!(dir = %self.model_dir.display(), "Embedding model loaded.");
                Ok(embed::Embedder::new(model, self.workers))
            })
            .await
    }
}
pub mod import;
