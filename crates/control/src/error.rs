//! [`ControlError`]: every way a control-plane call fails, and the one `IntoResponse` that
//! turns it into an `ApiError` body with a stable code. Internal failures are logged here,
//! once, and reach the client only as "internal error".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wattmesh_proto::api::{ApiError, ApiErrorDetail};
use wattmesh_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed: bad JSON, wrong types, unknown fields, invalid values.
    #[error("{0}")]
    BadRequest(String),
    /// No or a wrong bearer token.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ControlError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ControlError::Io {
            context: context.into(),
            source,
        }
    }

    /// The HTTP status and stable code of this error.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ControlError::BadRequest(_) | ControlError::Store(StoreError::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            ControlError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ControlError::NotFound(_) | ControlError::Store(StoreError::NotFound { .. }) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ControlError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ControlError::Conflict(_) | ControlError::Store(StoreError::Conflict(_)) => {
                (StatusCode::CONFLICT, "conflict")
            }
            ControlError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ControlError::Store(StoreError::Db(_)) | ControlError::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal error; the control plane's log has the details".to_owned()
        } else {
            self.to_string()
        };
        let body = ApiError {
            error: ApiErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        (status, Json(body)).into_response()
    }
}
