//! API-key authentication as a tower layer: `Authorization: Bearer <key>`, looked up by the
//! SHA-256 of the key in the key set in force. It runs before the body is read, and hands the
//! handler the caller and the snapshot it was checked against.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use wattmesh_proto::gateway::GatewayKey;

use crate::GatewayState;
use crate::config::Snapshot;
use crate::error::GatewayError;

/// Who is calling: the key, set by [`require_key`] for the handlers and metering.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub key: Arc<GatewayKey>,
}

/// The middleware: 503 until a config is loaded, then 401 unless the key is known and not
/// expired.
pub async fn require_key(
    State(state): State<GatewayState>,
    mut req: Request,
    next: Next,
) -> Result<Response, GatewayError> {
    let snap = state.snapshot();
    if !snap.loaded {
        return Err(GatewayError::NotConfigured);
    }
    let key = authenticate(req.headers(), &snap)?;
    // The config leaves expired keys out, but a key must stop at its expiry, not at the next
    // config.
    if key.expires_at_ms.is_some_and(|t| t <= crate::now_ms()) {
        return Err(GatewayError::ExpiredKey);
    }
    let caller = Caller { key: key.clone() };
    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(Arc::clone(&snap));
    Ok(next.run(req).await)
}

/// Finds the key of `Authorization: Bearer <key>` by the SHA-256 of its secret.
pub fn authenticate<'a>(
    headers: &HeaderMap,
    snap: &'a Snapshot,
) -> Result<&'a Arc<GatewayKey>, GatewayError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(GatewayError::NoKey)?;
    let value = value.to_str().map_err(|_| GatewayError::NoKey)?;
    let (scheme, secret) = value.split_once(' ').ok_or(GatewayError::NoKey)?;
    let secret = secret.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || secret.is_empty() {
        return Err(GatewayError::NoKey);
    }
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    snap.keys
        .get(&hash)
        .ok_or_else(|| GatewayError::BadKey(mask(secret)))
}

/// A preview of a key safe to show back, as OpenAI does: a short head and tail of long keys,
/// nothing of short ones.
fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 16 {
        return "***".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys() {
        assert_eq!(mask("short"), "***");
        assert_eq!(mask("sk-0123456789abcdefWXYZ"), "sk-***WXYZ");
    }
}
