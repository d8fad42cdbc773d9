//! A loaded model ready to serve: the unit the site agent starts, serves and stops.
//!
//! A [`Replica`] is a cheap, cloneable handle (an `Arc` inside) shared by the HTTP handlers.
//! It owns the model, its per-replica metrics, and the admission of work: chat generation
//! goes to the replica's batching worker (`worker`); embeddings run one
//! request at a time on the blocking pool behind a semaphore, so a replica never competes
//! with itself for the CPU.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use wattmesh_domain::ModelKind;
use wattmesh_proto::openai::FinishReason;

use crate::chat::ChatModel;
use crate::embed::{EmbeddingModel, TokenizedInputs};
use crate::error::EngineError;
use crate::metrics::{Metrics, Ticket};
use crate::options::EngineOptions;

/// A loaded model, ready to serve. Cheap to clone (Arc inside).
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    created: u64,
    model: Model,
    metrics: Arc<Metrics>,
}

/// The model behind a replica, by kind.
#[expect(
    clippy::large_enum_variant,
    reason = "one per replica, inside an Arc: boxing would buy nothing"
)]
pub(crate) enum Model {
    Chat(ChatModel),
    Embedding {
        model: EmbeddingModel,
        gate: Semaphore,
    },
}

impl Replica {
    /// Loads a model from its artifact directory: for ModelKind::Chat the directory holds
    /// exactly one `*.gguf` file; for ModelKind::Embedding it holds config.json,
    /// tokenizer.json, model.safetensors. Tuned by the `WATTMESH_*` environment
    /// ([`EngineOptions::from_env`]). Blocking (call from spawn_blocking).
    pub fn load(served_name: &str, kind: ModelKind, dir: &Path) -> Result<Replica, EngineError> {
        Self::load_with(served_name, kind, dir, &EngineOptions::from_env()?)
    }

    /// As [`Self::load`], with explicit options.
    pub fn load_with(
        served_name: &str,
        kind: ModelKind,
        dir: &Path,
        options: &EngineOptions,
    ) -> Result<Replica, EngineError> {
        let metrics = Arc::new(Metrics::default());
        let model = match kind {
            ModelKind::Chat => {
                Model::Chat(ChatModel::load(served_name, dir, metrics.clone(), options)?)
            }
            ModelKind::Embedding => Model::Embedding {
                model: EmbeddingModel::load(dir)?,
                gate: Semaphore::new(1),
            },
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tracing::info!(model = served_name, kind = kind.as_str(), dir = %dir.display(), "model loaded");
        Ok(Replica {
            inner: Arc::new(Inner {
                name: served_name.to_owned(),
                created,
                model,
                metrics,
            }),
        })
    }

    /// The name clients use for this model.
    pub fn served_name(&self) -> &str {
        &self.inner.name
    }

    pub fn kind(&self) -> ModelKind {
        match self.inner.model {
            Model::Chat(_) => ModelKind::Chat,
            Model::Embedding { .. } => ModelKind::Embedding,
        }
    }

    /// Unix seconds when the model was loaded.
    pub fn created(&self) -> u64 {
        self.inner.created
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The chat model, or a 400 naming the endpoint this model does not serve.
    pub fn chat(&self, endpoint: &str) -> Result<&ChatModel, EngineError> {
        match &self.inner.model {
            Model::Chat(chat) => Ok(chat),
            Model::Embedding { .. } => Err(self.wrong_kind(endpoint)),
        }
    }

    /// A 400 unless this replica serves `kind`; `endpoint` names what the client called.
    pub fn require(&self, kind: ModelKind, endpoint: &str) -> Result<(), EngineError> {
        if self.kind() == kind {
            Ok(())
        } else {
            Err(self.wrong_kind(endpoint))
        }
    }

    /// Checks that `model` names this replica (404 otherwise).
    pub fn check_model(&self, model: &str) -> Result<(), EngineError> {
        if model == self.inner.name {
            Ok(())
        } else {
            Err(EngineError::ModelNotFound(model.to_owned()))
        }
    }

    /// Embeds `inputs` (one request at a time per replica, off the async runtime); returns
    /// the vectors and the tokens billed.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        let Model::Embedding { gate, .. } = &self.inner.model else {
            return Err(self.wrong_kind("/v1/embeddings"));
        };
        let metrics = &self.inner.metrics;
        let mut ticket = Ticket::queue(metrics);
        let permit = gate.acquire().await;
        ticket.start();
        let this = self.clone();
        let result = match permit {
            Ok(_permit) => tokio::task::spawn_blocking(move || this.embed_blocking(&inputs))
                .await
                .unwrap_or(Err(EngineError::Unavailable)),
            Err(_) => Err(EngineError::Unavailable),
        };
        match &result {
            Ok((_, tokens)) => {
                metrics.add_prompt_tokens(*tokens as u64);
                ticket.finish(Some(FinishReason::Stop));
            }
            Err(_) => ticket.finish(None),
        }
        result
    }

    fn embed_blocking(&self, inputs: &[String]) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        let Model::Embedding { model, .. } = &self.inner.model else {
            return Err(self.wrong_kind("/v1/embeddings"));
        };
        let tokens: TokenizedInputs = model.tokenize(inputs)?;
        let vectors = model.embed(&tokens)?;
        Ok((vectors, tokens.total_tokens()))
    }

    /// The embedding dimensions, for embedding replicas.
    pub fn embedding_dimensions(&self) -> Option<usize> {
        match &self.inner.model {
            Model::Embedding { model, .. } => Some(model.dimensions()),
            Model::Chat(_) => None,
        }
    }

    fn wrong_kind(&self, endpoint: &str) -> EngineError {
        EngineError::invalid(
            "model",
            format!(
                "the model `{}` is a {} model and does not support {endpoint}",
                self.inner.name,
                self.kind().as_str()
            ),
        )
    }
}
