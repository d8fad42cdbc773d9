//! Every failure the gateway answers itself, mapped to OpenAI's error shape in one place and
//! logged once, here. Errors from replicas are not here: they pass through unchanged.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wattmesh_proto::openai::{ErrorKind, ErrorResponse};

use crate::limits::{RateHeaders, Refusal};

/// Seconds a client is told to wait (`Retry-After`) when no replica can take its request.
const RETRY_AFTER_S: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("missing or malformed Authorization header")]
    NoKey,
    /// Carries a masked preview of the key, never the key.
    #[error("unknown API key {0}")]
    BadKey(String),
    #[error("expired API key")]
    ExpiredKey,
    /// Over a rate limit of the key or its tenant.
    #[error("{}", .0.message)]
    RateLimited(Refusal),
    /// The tenant's prepaid credit does not cover the request's worst case.
    #[error("insufficient credit")]
    InsufficientQuota(RateHeaders),
    /// Credit had to be leased and the control plane could not be asked.
    #[error("credit unavailable: {0}")]
    CreditUnavailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive within the body read timeout: 408, the one status OpenAI's
    /// error kinds have no name for.
    #[error("The request body was not received within {} seconds.", .0.as_secs_f64())]
    BodyTimeout(std::time::Duration),
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    #[error("no route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("No replica of model `{0}` is available right now; retry shortly.")]
    NoReplica(String),
    /// A batch request whose model is served only from sites shedding load for a grid
    /// demand-response event: batch work waits until the event ends.
    #[error(
        "Every replica of model `{0}` is on a site shedding load for a grid demand-response \
         event; batch and flex requests wait until it ends. Retry later, or send the request \
         at default priority."
    )]
    Shedding(String),
    #[error("The gateway has not loaded its configuration yet; retry shortly.")]
    NotConfigured,
    /// Internals (addresses, OS errors) for the log only.
    #[error("upstream failed: {0}")]
    Upstream(String),
}

impl GatewayError {
    fn kind(&self) -> ErrorKind {
        match self {
            GatewayError::NoKey | GatewayError::BadKey(_) | GatewayError::ExpiredKey => {
                ErrorKind::InvalidApiKey
            }
            GatewayError::RateLimited(_) => ErrorKind::RateLimited,
            GatewayError::InsufficientQuota(_) => ErrorKind::InsufficientQuota,
            GatewayError::BadRequest(_) | GatewayError::BodyTimeout(_) => ErrorKind::InvalidRequest,
            GatewayError::TooLarge(_) => ErrorKind::RequestTooLarge,
            GatewayError::UnknownModel(_) => ErrorKind::ModelNotFound,
            GatewayError::NotFound => ErrorKind::NotFound,
            GatewayError::MethodNotAllowed => ErrorKind::MethodNotAllowed,
            GatewayError::NoReplica(_)
            | GatewayError::Shedding(_)
            | GatewayError::NotConfigured
            | GatewayError::CreditUnavailable(_)
            | GatewayError::Upstream(_) => ErrorKind::Unavailable,
        }
    }

    /// What the client reads: never internals.
    fn message(&self) -> String {
        match self {
            GatewayError::NoKey => "You didn't provide an API key. You need to provide your API \
                                    key in an Authorization header using Bearer auth (i.e. \
                                    Authorization: Bearer YOUR_KEY)."
                .to_owned(),
            GatewayError::BadKey(masked) => format!("Incorrect API key provided: {masked}."),
            GatewayError::ExpiredKey => "The API key provided has expired.".to_owned(),
            GatewayError::InsufficientQuota(_) => "You exceeded your current quota, please \
                                                   check your plan and billing details."
                .to_owned(),
            GatewayError::CreditUnavailable(_) => {
                "Your credit could not be checked right now; retry shortly.".to_owned()
            }
            GatewayError::TooLarge(limit) => {
                format!("The request body is larger than the {limit} bytes this server accepts.")
            }
            GatewayError::NotFound => "Unknown request URL. Check the path and method.".to_owned(),
            GatewayError::MethodNotAllowed => {
                "This method is not allowed on this URL. Check the path and method.".to_owned()
            }
            GatewayError::Upstream(_) => {
                "No replica could serve the request right now; retry shortly.".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = match self {
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "{self}");
        } else {
            tracing::debug!(status = status.as_u16(), "{self}");
        }
        let mut resp =
            (status, axum::Json(ErrorResponse::new(kind, self.message()))).into_response();
        match &self {
            GatewayError::RateLimited(refusal) => {
                let retry = HeaderValue::from(refusal.retry_after_s);
                resp.headers_mut().insert(header::RETRY_AFTER, retry);
                add_rate_headers(&mut resp, &refusal.headers);
            }
            GatewayError::InsufficientQuota(headers) => add_rate_headers(&mut resp, headers),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
            }
            _ => {}
        }
        resp
    }
}

/// OpenAI's `x-ratelimit-*` headers, on every answer that went through the limits.
pub fn add_rate_headers(resp: &mut Response, headers: &RateHeaders) {
    for (name, value) in headers.pairs() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
}
