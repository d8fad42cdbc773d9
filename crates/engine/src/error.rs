//! The engine's one error type, and the one place where errors meet HTTP.
//!
//! Loading, validation and generation all fail with [`EngineError`]; its [`IntoResponse`]
//! impl turns each variant into OpenAI's error envelope with the right status. Clients see
//! a short message for their own mistakes and a generic one for ours; ours are logged here,
//! once.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wattmesh_proto::openai::{ErrorKind, ErrorResponse};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model artifact could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A model artifact is present but not what the engine expects.
    #[error("bad model artifact: {0}")]
    Artifact(String),
    /// A tuning option (a `WATTMESH_*` variable) has a value the engine cannot use.
    #[error("invalid engine option: {0}")]
    Option(String),
    /// candle failed while loading or running the model.
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    /// Generation failed mid-way (a candle error in the worker).
    #[error("generation failed: {0}")]
    Generation(String),
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The request is malformed or asks for something this engine does not do.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// The prompt plus the completion budget does not fit the model's context.
    #[error("{0}")]
    ContextLengthExceeded(String),
    /// The request names a model this replica does not serve.
    #[error("The model `{0}` does not exist")]
    ModelNotFound(String),
    /// The body is over the size limit.
    #[error("request body is too large")]
    TooLarge,
    /// No such route.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The route exists, not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The caller did not present the replica's access token: only its gateways may call.
    #[error("This replica serves its gateways only; call the gateway.")]
    Unauthorized,
    /// The generation worker is gone (the replica is shutting down).
    #[error("the model is not available")]
    Unavailable,
    /// The queue in front of the running batch is full: 503 with `Retry-After`.
    #[error(
        "The model is overloaded: {waiting} requests are already waiting. \
         Please retry after {retry_after} seconds."
    )]
    Overloaded { waiting: usize, retry_after: u64 },
}

impl EngineError {
    /// A 400 for a request field.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        EngineError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        EngineError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    /// The OpenAI error kind a client sees for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidRequest { .. } => ErrorKind::InvalidRequest,
            EngineError::ContextLengthExceeded(_) => ErrorKind::ContextLengthExceeded,
            EngineError::ModelNotFound(_) => ErrorKind::ModelNotFound,
            EngineError::TooLarge => ErrorKind::RequestTooLarge,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::MethodNotAllowed => ErrorKind::MethodNotAllowed,
            EngineError::Unauthorized => ErrorKind::InvalidApiKey,
            EngineError::Unavailable | EngineError::Overloaded { .. } => ErrorKind::Unavailable,
            EngineError::Io { .. }
            | EngineError::Artifact(_)
            | EngineError::Option(_)
            | EngineError::Model(_)
            | EngineError::Generation(_)
            | EngineError::Tokenizer(_) => ErrorKind::Internal,
        }
    }

    /// The OpenAI error body; internal failures get a generic message, never internals.
    pub fn to_response_body(&self) -> ErrorResponse {
        let kind = self.kind();
        let message = match kind {
            ErrorKind::Internal => "The server had an error while processing your request.".into(),
            _ => self.to_string(),
        };
        let body = ErrorResponse::new(kind, message);
        match self {
            EngineError::InvalidRequest { param: Some(p), .. } => body.with_param(*p),
            EngineError::ContextLengthExceeded(_) => body.with_param("messages"),
            EngineError::ModelNotFound(_) => body.with_param("model"),
            _ => body,
        }
    }
}

impl IntoResponse for EngineError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        if kind == ErrorKind::Internal {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.to_response_body())).into_response();
        if let EngineError::Overloaded { retry_after, .. } = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after),
            );
        }
        response
    }
}
