//! The request body, read just enough for routing: within the size limit (declared or not),
//! a JSON object with a string `model`. Everything else in it is the replica's to validate;
//! the bytes are forwarded as they came.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::error::GatewayError;

/// Reads `body` whole within `timeout`, refusing it (413) once it is over `limit` bytes, by
/// its `Content-Length` before reading or by counting when there is none; 408 when it does not
/// arrive in time. The timeout covers this read only, never the answer that follows.
///
/// A refused body is drained (read and dropped, up to `limit` bytes more and within the same
/// deadline) before the 413 goes out: answering while the client is still sending makes the
/// server close a socket with unread data, which resets the connection, and the client reads
/// "connection reset" instead of our 413. Beyond the drain allowance, or when the client waits
/// for `100 Continue` (and so has sent nothing), the 413 goes out at once.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let deadline = Instant::now() + timeout;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let waits_for_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let allowance = limit.saturating_mul(2);
    let mut body = body;
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        if !waits_for_continue && n <= allowance as u64 {
            let _ = tokio::time::timeout_at(deadline, drain(&mut body, allowance)).await;
        }
        return Err(GatewayError::TooLarge(limit));
    }
    // `Ok(Err(n))`: over the limit after `n` bytes.
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| GatewayError::BadRequest("Could not read the request body.".into()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: nothing to route on
            };
            if buf.len() + data.len() > limit {
                return Ok(Err(buf.len() + data.len()));
            }
            buf.extend_from_slice(&data);
        }
        Ok(Ok(buf.freeze()))
    };
    match tokio::time::timeout_at(deadline, read).await {
        Err(_) => Err(GatewayError::BodyTimeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Ok(whole))) => Ok(whole),
        Ok(Ok(Err(counted))) => {
            let left = allowance.saturating_sub(counted);
            let _ = tokio::time::timeout_at(deadline, drain(&mut body, left)).await;
            Err(GatewayError::TooLarge(limit))
        }
    }
}

/// Reads and drops what is left of `body`, at most about `allowance` bytes more.
async fn drain(body: &mut Body, allowance: usize) {
    let mut left = allowance;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            match left.checked_sub(data.len()) {
                Some(l) => left = l,
                None => return,
            }
        }
    }
}

/// What the gateway reads from a request body to route, admit and meter it.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyFacts {
    pub model: String,
    /// The scheduling class for the replica: OpenAI's `service_tier` mapped onto ours
    /// (`priority` → high, `flex` → low, `auto`/`default`/absent → normal).
    pub priority: &'static str,
    /// Whether the answer is an SSE stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`, when a non-negative integer.
    pub max_tokens: Option<u64>,
    /// The body with `stream_options.include_usage` set, when the client streams without it:
    /// every request is billable, so the gateway always asks the replica for usage and strips
    /// the usage chunk on the way back. `None`: forward the body as it came.
    pub upstream: Option<Bytes>,
}

/// The model, class, streaming and usage options of a JSON body.
pub fn facts_of(body: &[u8]) -> Result<BodyFacts, GatewayError> {
    let value = parse_object(body)?;
    let model = model_in(&value)?;
    let priority = match value.get("service_tier") {
        None | Some(serde_json::Value::Null) => "normal",
        Some(serde_json::Value::String(t)) => match t.as_str() {
            "auto" | "default" => "normal",
            "priority" => "high",
            "flex" => wattmesh_proto::gateway::DEFERRABLE_PRIORITY,
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
    let stream = value.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
    let include_usage = value
        .pointer("/stream_options/include_usage")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    let max_tokens = value
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| value.get("max_tokens"))
        .and_then(serde_json::Value::as_u64);
    let upstream = if stream && !include_usage {
        ask_for_usage(body)?
    } else {
        None
    };
    Ok(BodyFacts {
        model,
        priority,
        stream,
        include_usage,
        max_tokens,
        upstream,
    })
}

/// The body with `stream_options.include_usage` set. Every other field is kept as the client
/// wrote it (raw JSON, not re-encoded: `1e9` must not become `1000000000.0` and grow the body
/// past what the replica takes). `stream_options` that is not an object is the replica's to
/// refuse, so the body is then left alone.
fn ask_for_usage(body: &[u8]) -> Result<Option<Bytes>, GatewayError> {
    use serde_json::value::RawValue;
    let bad = |e: serde_json::Error| {
        GatewayError::BadRequest(format!("Could not re-encode the body: {e}"))
    };
    let mut fields: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(bad)?;
    let mut options = match fields.get("stream_options").map(|raw| raw.get()) {
        None | Some("null") => serde_json::Map::new(),
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw).map_err(bad)? {
            serde_json::Value::Object(options) => options,
            _ => return Ok(None),
        },
    };
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    let options = serde_json::to_string(&options).map_err(bad)?;
    fields.insert(
        "stream_options".into(),
        RawValue::from_string(options).map_err(bad)?,
    );
    serde_json::to_vec(&fields)
        .map(|v| Some(Bytes::from(v)))
        .map_err(bad)
}

fn parse_object(body: &[u8]) -> Result<serde_json::Value, GatewayError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    if !value.is_object() {
        return Err(GatewayError::BadRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    Ok(value)
}

fn model_in(value: &serde_json::Value) -> Result<String, GatewayError> {
    match value.get("model") {
        Some(serde_json::Value::String(m)) => Ok(m.clone()),
        Some(_) => Err(GatewayError::BadRequest("'model' must be a string.".into())),
        None => Err(GatewayError::BadRequest(
            "You must provide a model parameter.".into(),
        )),
    }
}

/// The model named by a JSON body.
pub fn model_of(body: &[u8]) -> Result<String, GatewayError> {
    model_in(&parse_object(body)?)
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
    fn streams_without_usage_are_asked_for_it() {
        let cases: &[(&str, bool, bool, Option<&str>)] = &[
            (r#"{"model":"m"}"#, false, false, None),
            (r#"{"model":"m","stream":false}"#, false, false, None),
            (
                r#"{"model":"m","stream":true}"#,
                true,
                false,
                Some(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":null}"#,
                true,
                false,
                Some(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
                true,
                false,
                Some(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
                true,
                true,
                None,
            ),
            // Not an object: left for the replica to refuse.
            (
                r#"{"model":"m","stream":true,"stream_options":7}"#,
                true,
                false,
                None,
            ),
        ];
        for (body, stream, include, upstream) in cases {
            let f = facts_of(body.as_bytes()).unwrap();
            assert_eq!((f.stream, f.include_usage), (*stream, *include), "{body}");
            let got = f.upstream.map(|b| String::from_utf8(b.to_vec()).unwrap());
            let want = upstream.map(|u| {
                serde_json::to_string(&serde_json::from_str::<serde_json::Value>(u).unwrap())
                    .unwrap()
            });
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn asking_for_usage_rewrites_nothing_else() {
        let body = br#"{"model":"m","stream":true,"seed":1e9,"temperature":0.10,"x":[1.0]}"#;
        let up = facts_of(body).unwrap().upstream.unwrap();
        assert_eq!(
            std::str::from_utf8(&up).unwrap(),
            r#"{"model":"m","seed":1e9,"stream":true,"stream_options":{"include_usage":true},"temperature":0.10,"x":[1.0]}"#
        );
    }

    #[test]
    fn max_tokens_prefers_max_completion_tokens() {
        for (body, want) in [
            (r#"{"model":"m"}"#, None),
            (r#"{"model":"m","max_tokens":9}"#, Some(9)),
            (
                r#"{"model":"m","max_tokens":9,"max_completion_tokens":5}"#,
                Some(5),
            ),
            (
                r#"{"model":"m","max_tokens":9,"max_completion_tokens":null}"#,
                Some(9),
            ),
            (r#"{"model":"m","max_tokens":-1}"#, None),
        ] {
            assert_eq!(
                facts_of(body.as_bytes()).unwrap().max_tokens,
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
