//! What a model is to the fleet: the API it serves and what one replica of it needs.

use serde::{Deserialize, Serialize};

/// The API family a model serves. A closed set: engines dispatch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Chat and text completions (`/v1/chat/completions`, `/v1/completions`).
    Chat,
    /// Vector embeddings (`/v1/embeddings`).
    Embedding,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chat" => Ok(ModelKind::Chat),
            "embedding" => Ok(ModelKind::Embedding),
            other => Err(format!(
                "unknown model kind {other:?} (expected chat or embedding)"
            )),
        }
    }
}
