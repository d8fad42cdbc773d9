//! The gateway's behaviour through its HTTP surface: broken inputs against `router(state)`
//! with `oneshot`, forwarding against fake replicas on real sockets, and the config watcher
//! against a fake control plane.

mod broken_inputs;
mod forwarding;
mod hardening;
mod watcher;

use axum::http::StatusCode;
use wattmesh_proto::openai::ErrorResponse;

/// Asserts an OpenAI-shaped error with this status, `type` and `code`.
pub(crate) fn assert_openai_error(
    what: &str,
    status: StatusCode,
    body: &[u8],
    want_status: u16,
    want_type: &str,
    want_code: Option<&str>,
) -> ErrorResponse {
    assert_eq!(
        status.as_u16(),
        want_status,
        "{what}: status; body {}",
        String::from_utf8_lossy(body)
    );
    let err: ErrorResponse = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: not the OpenAI error shape ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(err.error.kind, want_type, "{what}: error.type");
    assert_eq!(err.error.code.as_deref(), want_code, "{what}: error.code");
    assert!(!err.error.message.is_empty(), "{what}: error.message");
    err
}
