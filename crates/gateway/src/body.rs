//! The request body, read just enough for routing: within the size limit (declared or not),
//! a JSON object with a string `model`. Everything else in it is the replica's to validate;
//! the bytes are forwarded as they came.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::GatewayError;

/// Reads `body` whole, refusing it (413) once it is over `limit` bytes, by its
/// `Content-Length` before reading or by counting when there is none.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::TooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(GatewayError::TooLarge(limit))
        }
        Err(_) => Err(GatewayError::BadRequest(
            "Could not read the request body.".into(),
        )),
    }
}

/// What the gateway reads from a request body to route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFacts {
    pub model: String,
    /// The scheduling class for the replica: OpenAI's `service_tier` mapped onto ours
    /// (`priority` → high, `flex` → low, `auto`/`default`/absent → normal).
    pub priority: &'static str,
}

/// The model and scheduling class of a JSON body.
pub fn facts_of(body: &[u8]) -> Result<BodyFacts, GatewayError> {
    let model = model_of(body)?;
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let priority = match value.get("service_tier") {
        None | Some(serde_json::Value::Null) => "normal",
        Some(serde_json::Value::String(t)) => match t.as_str() {
            "auto" | "default" => "normal",
            "priority" => "high",
            "flex" => "low",
            other => {
                return Err(GatewayError::BadRequest(format!(
                    "Invalid value for 'service_tier': '{other}'. Supported values are: \
                     'auto', 'default', 'flex' and 'priority'."
                )));
            }
        },
        Some(_) => {
            return Err(GatewayError::BadRequest(
                "'service_tier' must be a string.".into(),
            ));
        }
    };
    Ok(BodyFacts { model, priority })
}

/// The model named by a JSON body.
pub fn model_of(body: &[u8]) -> Result<String, GatewayError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    let obj = value.as_object().ok_or_else(|| {
        GatewayError::BadRequest("The request body must be a JSON object.".into())
    })?;
    match obj.get("model") {
        Some(serde_json::Value::String(m)) => Ok(m.clone()),
        Some(_) => Err(GatewayError::BadRequest("'model' must be a string.".into())),
        None => Err(GatewayError::BadRequest(
            "You must provide a model parameter.".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_tiers_map_to_classes() {
        for (body, want) in [
            (r#"{"model":"m"}"#, Some("normal")),
            (r#"{"model":"m","service_tier":null}"#, Some("normal")),
            (r#"{"model":"m","service_tier":"auto"}"#, Some("normal")),
            (r#"{"model":"m","service_tier":"priority"}"#, Some("high")),
            (r#"{"model":"m","service_tier":"flex"}"#, Some("low")),
            (r#"{"model":"m","service_tier":"turbo"}"#, None),
            (r#"{"model":"m","service_tier":1}"#, None),
        ] {
            assert_eq!(
                facts_of(body.as_bytes()).ok().map(|f| f.priority),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn model_of_bodies() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"model":"m","messages":[]}"#, Some("m")),
            (r#"{"messages":[]}"#, None),
            (r#"{"model":7}"#, None),
            (r#"[{"model":"m"}]"#, None),
            (r#"{"model":"m""#, None),
            ("", None),
        ];
        for (body, want) in cases {
            assert_eq!(model_of(body.as_bytes()).ok().as_deref(), *want, "{body}");
        }
    }
}
