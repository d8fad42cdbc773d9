//! A zero-latency OpenAI upstream for benchmarks (`bench/gateway/run`): it answers
//! `POST /v1/chat/completions` at once with a fixed small chat completion (with `usage`), or,
//! with `"stream": true`, a short SSE stream (role chunk, three content chunks, finish chunk,
//! the usage chunk when `stream_options.include_usage` is set, `data: [DONE]`), and
//! `GET /health` with 200. It exists so that the gateway and LiteLLM are measured in front of
//! the same upstream, one that is never the bottleneck: every answer is a constant.
//!
//! ```sh
//! cargo run --release -p wattmesh-gateway --example mock_upstream -- 127.0.0.1:9000 [threads]
//! ```
//!
//! Prints `ready http://ADDR` on stdout once listening (port 0 picks one); stops on Ctrl-C.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;

const ANSWER: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"mock","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help?"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20},"system_fingerprint":null}"#;

/// The stream's events before the usage chunk; `USAGE_NULL` is replaced by `,"usage":null`
/// when the client asked for usage (as OpenAI does), else by nothing.
const EVENTS: [&str; 5] = [
    r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]USAGE_NULL}"#,
    r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]USAGE_NULL}"#,
    r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[{"index":0,"delta":{"content":" there,"},"finish_reason":null}]USAGE_NULL}"#,
    r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[{"index":0,"delta":{"content":" friend"},"finish_reason":null}]USAGE_NULL}"#,
    r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]USAGE_NULL}"#,
];
const USAGE_EVENT: &str = r#"data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"mock","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}"#;
const DONE: &str = "data: [DONE]";

/// The whole stream as SSE events, built once per variant.
struct Streams {
    with_usage: Vec<Bytes>,
    without_usage: Vec<Bytes>,
}

impl Streams {
    fn build() -> Self {
        let events = |usage: bool| {
            let mut out: Vec<Bytes> = EVENTS
                .iter()
                .map(|e| {
                    let e = e.replace("USAGE_NULL", if usage { r#","usage":null"# } else { "" });
                    Bytes::from(format!("{e}\n\n"))
                })
                .collect();
            if usage {
                out.push(Bytes::from(format!("{USAGE_EVENT}\n\n")));
            }
            out.push(Bytes::from(format!("{DONE}\n\n")));
            out
        };
        Self {
            with_usage: events(true),
            without_usage: events(false),
        }
    }
}

/// The fields of a request the mock looks at; everything else is ignored.
#[derive(serde::Deserialize, Default)]
struct Ask {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

static STREAMS: std::sync::OnceLock<Streams> = std::sync::OnceLock::new();

async fn chat(body: Bytes) -> Response {
    let ask: Ask = serde_json::from_slice(&body).unwrap_or_default();
    if !ask.stream {
        return ([(header::CONTENT_TYPE, "application/json")], ANSWER).into_response();
    }
    let streams = STREAMS.get_or_init(Streams::build);
    let usage = ask.stream_options.is_some_and(|o| o.include_usage);
    let events = if usage {
        streams.with_usage.clone()
    } else {
        streams.without_usage.clone()
    };
    let body = Body::from_stream(futures::stream::iter(
        events.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(async move {
            let app = Router::new()
                .route("/v1/chat/completions", post(chat))
                .route("/health", get(|| async { StatusCode::OK }));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("ready http://{}", listener.local_addr()?);
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    eprintln!("TCP_NODELAY: {e}");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        })
}
