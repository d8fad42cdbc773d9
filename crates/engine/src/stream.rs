//! OpenAI server-sent events: turns a generation's events into the exact chunk sequence the
//! official SDKs expect, and collects them for non-streamed responses.
//!
//! Chat: a first chunk with `delta: {role: "assistant", content: ""}`, one chunk per text
//! piece, a chunk with an empty delta and the `finish_reason`, then (only with
//! `stream_options.include_usage`) a chunk with `choices: []` and the usage, while every
//! earlier chunk carries `"usage": null`; finally `data: [DONE]`. Completions follow the same
//! shape with `text_completion` objects and no role chunk. The body owns the event receiver,
//! so a client that disconnects drops it and the worker stops generating.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, stream};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use wattmesh_proto::gateway::PROMPT_TOKENS_HEADER;
use wattmesh_proto::openai::{
    ChatCompletionChunk, ChunkChoice, Completion, CompletionChoice, Delta, ErrorKind,
    ErrorResponse, FinishReason, Role, STREAM_DONE, Usage,
};

use crate::error::EngineError;
use crate::generate::GenEvent;

/// What every chunk of one response repeats.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

/// The endpoint a stream answers, which decides the chunk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Chat,
    Completion,
}

/// A streamed response over `events`, for a prompt of `prompt_tokens` tokens (told to the
/// gateway in a header, for billing a stream cut before its usage chunk).
pub fn sse_response(
    kind: StreamKind,
    meta: StreamMeta,
    prompt_tokens: usize,
    events: mpsc::UnboundedReceiver<GenEvent>,
) -> Response {
    let head = match kind {
        StreamKind::Chat => vec![chat_chunk(
            &meta,
            Delta {
                role: Some(Role::Assistant),
                content: Some(String::new()),
            },
            None,
        )],
        StreamKind::Completion => Vec::new(),
    };
    let body = UnboundedReceiverStream::new(events)
        .flat_map(move |event| stream::iter(render(kind, &meta, event)));
    let frames = stream::iter(head).chain(body).map(Ok::<Bytes, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream".to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (
                header::HeaderName::from_static(PROMPT_TOKENS_HEADER),
                prompt_tokens.to_string(),
            ),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

/// The frames one event becomes.
fn render(kind: StreamKind, meta: &StreamMeta, event: GenEvent) -> Vec<Bytes> {
    match (kind, event) {
        (StreamKind::Chat, GenEvent::Text(text)) => {
            vec![chat_chunk(
                meta,
                Delta {
                    role: None,
                    content: Some(text),
                },
                None,
            )]
        }
        (StreamKind::Completion, GenEvent::Text(text)) => vec![completion_chunk(meta, text, None)],
        (kind, GenEvent::Done { finish, usage, .. }) => {
            let mut frames = vec![match kind {
                StreamKind::Chat => chat_chunk(meta, Delta::default(), Some(finish)),
                StreamKind::Completion => completion_chunk(meta, String::new(), Some(finish)),
            }];
            if meta.include_usage {
                frames.push(usage_chunk(kind, meta, usage));
            }
            frames.push(frame_str(STREAM_DONE));
            frames
        }
        (_, GenEvent::Failed(_)) => {
            // Already logged by the worker; the client gets the generic server error.
            let err = ErrorResponse::new(
                ErrorKind::Internal,
                "The server had an error while processing your request.",
            );
            vec![frame(&err), frame_str(STREAM_DONE)]
        }
    }
}

fn chat_chunk(meta: &StreamMeta, delta: Delta, finish: Option<FinishReason>) -> Bytes {
    frame(&ChatCompletionChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
            logprobs: None,
        }],
        usage: meta.include_usage.then_some(None),
        system_fingerprint: None,
    })
}

fn completion_chunk(meta: &StreamMeta, text: String, finish: Option<FinishReason>) -> Bytes {
    let chunk = Completion {
        id: meta.id.clone(),
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices: vec![CompletionChoice {
            index: 0,
            text,
            finish_reason: finish,
            logprobs: None,
        }],
        usage: None,
    };
    if meta.include_usage {
        // `Completion` omits a missing usage; OpenAI sends `null` on every chunk here.
        let mut value = serde_json::to_value(&chunk).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("usage".into(), serde_json::Value::Null);
        }
        return frame(&value);
    }
    frame(&chunk)
}

fn usage_chunk(kind: StreamKind, meta: &StreamMeta, usage: Usage) -> Bytes {
    match kind {
        StreamKind::Chat => frame(&ChatCompletionChunk {
            id: meta.id.clone(),
            object: "chat.completion.chunk".into(),
            created: meta.created,
            model: meta.model.clone(),
            choices: vec![],
            usage: Some(Some(usage)),
            system_fingerprint: None,
        }),
        StreamKind::Completion => frame(&Completion {
            id: meta.id.clone(),
            object: "text_completion".into(),
            created: meta.created,
            model: meta.model.clone(),
            choices: vec![],
            usage: Some(usage),
        }),
    }
}

fn frame<T: Serialize>(value: &T) -> Bytes {
    // Our own wire types always serialize; an empty object is the harmless fallback.
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    frame_str(&json)
}

fn frame_str(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The outcome of a whole generation, for non-streamed responses.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub text: String,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// Waits for a generation to end and joins its text.
pub async fn collect(
    mut events: mpsc::UnboundedReceiver<GenEvent>,
) -> Result<Collected, EngineError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenEvent::Text(piece) => text.push_str(&piece),
            GenEvent::Done { finish, usage, .. } => {
                return Ok(Collected {
                    text,
                    finish,
                    usage,
                });
            }
            GenEvent::Failed(msg) => return Err(EngineError::Generation(msg)),
        }
    }
    Err(EngineError::Unavailable)
}
