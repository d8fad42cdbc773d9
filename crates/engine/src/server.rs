//! The OpenAI server of one replica: routes, request parsing, and the graceful serve loop.
//!
//! Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (chat models),
//! `POST /v1/embeddings` (embedding models), `GET /v1/models`, `GET /health`, `GET /metrics`.
//! Bodies are parsed by [`OpenAiJson`] rather than axum's `Json`, so malformed JSON, wrong
//! types and oversize bodies get OpenAI's error envelope instead of axum's plain text, and a
//! missing `Content-Type` (curl `-d`) is not an error. Unknown routes and methods answer in
//! the same envelope.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use wattmesh_domain::ModelKind;
use wattmesh_proto::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, Completion,
    CompletionChoice, CompletionRequest, Embedding, EmbeddingInput, EmbeddingList,
    EmbeddingRequest, EmbeddingVector, EncodingFormat, ModelList, ModelObject, Role, Usage,
};

use crate::error::EngineError;
use crate::generate::Priority;
use crate::replica::Replica;
use crate::stream::{StreamKind, StreamMeta, collect, sse_response};
use wattmesh_proto::gateway::PRIORITY_HEADER;

/// The largest request body accepted; larger ones get a 413.
///
/// Twice the gateway's limit (`wattmesh_gateway::DEFAULT_MAX_BODY_BYTES`, 4 MiB), and it must
/// stay above it: the gateway is where bodies are refused, in OpenAI's shape. A replica that
/// refused a body the gateway admitted would answer while the gateway is still sending, and
/// the gateway could only read the closed connection as a failed replica (a 503 instead of a
/// 413). The margin covers the gateway's own additions (it may add `stream_options`). The
/// engine cannot see the gateway's constant (no dependency either way), so
/// `crates/wattmesh/tests/body_limits.rs` checks the two against each other.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// OpenAI's limit on inputs per embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// Who may call a replica's `/v1` routes (`/health` and `/metrics` stay open to probes and
/// scrapers: they carry no customer data).
#[derive(Clone)]
pub enum Access {
    /// Callers must send `Authorization: Bearer <token>`: the token its agent made for this run
    /// and gave only to the control plane, which gives it to gateways. Everyone else — anyone
    /// on the host — would bypass the gateway's auth and metering.
    Token(String),
    /// Anyone: for a replica run alone (`examples/serve`, benchmarks), never by an agent.
    Open,
}

// The token stays out of logs.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Token(_) => f.write_str("Access::Token(<redacted>)"),
            Access::Open => f.write_str("Access::Open"),
        }
    }
}

/// Serves the OpenAI protocol of one replica on `listener` until `shutdown` is cancelled
/// (graceful: in-flight requests finish), to the callers `access` lets in.
pub async fn serve(
    listener: tokio::net::TcpListener,
    replica: Replica,
    access: Access,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, guarded_router(replica, access))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// [`router`] behind the access check.
pub fn guarded_router(replica: Replica, access: Access) -> Router {
    let Access::Token(token) = access else {
        return router(replica);
    };
    // Compared as digests: the time a comparison takes says nothing about the token.
    let want: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    router(replica).layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| async move {
            let path = req.uri().path();
            if path == "/health" || path == "/metrics" {
                return next.run(req).await;
            }
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| <[u8; 32]>::from(sha2::Sha256::digest(t.trim().as_bytes())));
            if given != Some(want) {
                return EngineError::Unauthorized.into_response();
            }
            next.run(req).await
        },
    ))
}

/// The same server as an axum Router, for oneshot tests.
pub fn router(replica: Replica) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move { EngineError::NotFound(req.uri().path().to_owned()) })
        .method_not_allowed_fallback(|| async { EngineError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(replica)
}

// === request parsing ===

/// A JSON body parsed into an OpenAI request, failing in OpenAI's error shape.
pub struct OpenAiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OpenAiJson<T> {
    type Rejection = EngineError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                EngineError::TooLarge
            } else {
                EngineError::bad_request(e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(OpenAiJson)
            .map_err(|e| EngineError::bad_request(format!("invalid request body: {e}")))
    }
}

// === handlers ===

/// The scheduling class a request asks for; `normal` when the header is absent.
fn priority(headers: &HeaderMap) -> Result<Priority, EngineError> {
    let Some(value) = headers.get(PRIORITY_HEADER) else {
        return Ok(Priority::default());
    };
    value
        .to_str()
        .ok()
        .and_then(Priority::parse)
        .ok_or_else(|| {
            EngineError::bad_request(format!(
                "{PRIORITY_HEADER} must be one of high, normal, low"
            ))
        })
}

async fn chat_completions(
    State(replica): State<Replica>,
    headers: HeaderMap,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, EngineError> {
    replica.check_model(&req.model)?;
    let chat = replica.chat("/v1/chat/completions")?;
    let priority = priority(&headers)?;
    let prepared = chat.prepare_chat(&req)?;
    let prompt_tokens = prepared.tokens.len();
    let events = chat.submit(prepared, priority)?;
    let meta = meta(
        &replica,
        "chatcmpl",
        req.stream_options.as_ref().is_some_and(|o| o.include_usage),
    );
    if req.stream == Some(true) {
        return Ok(sse_response(StreamKind::Chat, meta, prompt_tokens, events));
    }
    let done = collect(events).await?;
    Ok(Json(ChatCompletion {
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: Role::Assistant,
                content: done.text,
            },
            finish_reason: done.finish,
            logprobs: None,
        }],
        usage: done.usage,
        system_fingerprint: None,
    })
    .into_response())
}

async fn completions(
    State(replica): State<Replica>,
    headers: HeaderMap,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, EngineError> {
    replica.check_model(&req.model)?;
    let chat = replica.chat("/v1/completions")?;
    let priority = priority(&headers)?;
    let prepared = chat.prepare_completion(&req)?;
    let prompt_tokens = prepared.tokens.len();
    let events = chat.submit(prepared, priority)?;
    let meta = meta(
        &replica,
        "cmpl",
        req.stream_options.as_ref().is_some_and(|o| o.include_usage),
    );
    if req.stream == Some(true) {
        return Ok(sse_response(
            StreamKind::Completion,
            meta,
            prompt_tokens,
            events,
        ));
    }
    let done = collect(events).await?;
    Ok(Json(Completion {
        id: meta.id,
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model,
        choices: vec![CompletionChoice {
            index: 0,
            text: done.text,
            finish_reason: Some(done.finish),
            logprobs: None,
        }],
        usage: Some(done.usage),
    })
    .into_response())
}

async fn embeddings(
    State(replica): State<Replica>,
    OpenAiJson(req): OpenAiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingList>, EngineError> {
    replica.check_model(&req.model)?;
    replica.require(ModelKind::Embedding, "/v1/embeddings")?;
    let dims = replica.embedding_dimensions().unwrap_or_default();
    if let Some(d) = req.dimensions
        && d as usize != dims
    {
        return Err(EngineError::invalid(
            "dimensions",
            format!("this model only produces {dims}-dimensional embeddings"),
        ));
    }
    let inputs = match req.input {
        EmbeddingInput::Text(t) => vec![t],
        EmbeddingInput::Texts(ts) => ts,
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenBatches(_) => {
            return Err(EngineError::invalid(
                "input",
                "token arrays are not supported yet; send text",
            ));
        }
    };
    if inputs.is_empty() {
        return Err(EngineError::invalid("input", "input must not be empty"));
    }
    if inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(EngineError::invalid(
            "input",
            format!("at most {MAX_EMBEDDING_INPUTS} inputs per request"),
        ));
    }
    let format = req.encoding_format.unwrap_or_default();
    let (vectors, tokens) = replica.embed(inputs).await?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| Embedding {
            object: "embedding".into(),
            index: i as u32,
            embedding: match format {
                EncodingFormat::Float => EmbeddingVector::Float(v),
                EncodingFormat::Base64 => EmbeddingVector::Base64(encode_f32_base64(&v)),
            },
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list".into(),
        data,
        model: replica.served_name().to_owned(),
        usage: Usage::new(tokens as u32, 0),
    }))
}

async fn models(State(replica): State<Replica>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelObject {
            id: replica.served_name().to_owned(),
            object: "model".into(),
            created: replica.created(),
            owned_by: "wattmesh".into(),
        }],
    })
}

/// 200 once the replica exists: a `Replica` is only ever constructed loaded.
async fn health(State(replica): State<Replica>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "model": replica.served_name() }))
}

async fn metrics(State(replica): State<Replica>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        replica.metrics().render(replica.served_name()),
    )
        .into_response()
}

fn meta(replica: &Replica, prefix: &str, include_usage: bool) -> StreamMeta {
    StreamMeta {
        id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: replica.served_name().to_owned(),
        include_usage,
    }
}

/// Little-endian f32 bytes, standard base64: what OpenAI's `encoding_format=base64` returns.
pub fn encode_f32_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
