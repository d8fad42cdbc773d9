//! Every failure the gateway answers itself, mapped to OpenAI's error shape in one place.
//! Errors from replicas are not here: they pass through unchanged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wattmesh_proto::openai::{ErrorKind, ErrorResponse};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("missing or malformed Authorization header")]
    NoKey,
    #[error("unknown API key")]
    BadKey,
    #[error("{0}")]
    BadRequest(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("model {0:?} does not exist")]
    UnknownModel(String),
    #[error("no route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no replica of {0:?} is available")]
    NoReplica(String),
    #[error("the gateway has not loaded its configuration yet")]
    NotConfigured,
    #[error("upstream failed: {0}")]
    Upstream(String),
}

impl GatewayError {
    fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::NoKey | GatewayError::BadKey => ErrorKind::InvalidApiKey,
            GatewayError::BadRequest(_) => ErrorKind::InvalidRequest,
            GatewayError::TooLarge(_) => ErrorKind::RequestTooLarge,
            GatewayError::UnknownModel(_) => ErrorKind::ModelNotFound,
            GatewayError::NotFound => ErrorKind::NotFound,
            GatewayError::MethodNotAllowed => ErrorKind::MethodNotAllowed,
            GatewayError::NoReplica(_) | GatewayError::NotConfigured | GatewayError::Upstream(_) => {
                ErrorKind::Unavailable
            }
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayError::NoKey => "You didn't provide an API key. Pass it as \
                                    'Authorization: Bearer YOUR_KEY'."
                .to_owned(),
            GatewayError::BadKey => "Incorrect API key provided.".to_owned(),
            GatewayError::NotFound => "Unknown request URL. Check the path and method.".to_owned(),
            // Internals (addresses, OS errors) stay in the log.
            GatewayError::Upstream(_) => "No replica could serve the request; retry.".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        if matches!(self, GatewayError::Upstream(_)) {
            tracing::warn!("{self}");
        }
        let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(ErrorResponse::new(kind, self.message()))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
