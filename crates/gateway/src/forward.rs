//! Forwarding to a replica: pick one, send the original body, and relay the answer as a
//! stream. A connect error or a 503 before any body byte ejects that replica and the request
//! is tried once more on another; once an answer is being relayed it is never retried.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{Stream, StreamExt};
use wattmesh_proto::gateway::{ModelRoute, PRIORITY_HEADER};

use crate::GatewayState;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::metering::{Served, UsageTap};
use crate::replicas::{EJECTION, InFlight};
use crate::routing::{Candidate, pick};

/// The first try and one retry.
const MAX_ATTEMPTS: usize = 2;

/// Response headers relayed from the replica besides the status; the rest (connection
/// management, lengths) belong to each hop.
const RELAYED_HEADERS: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

/// Sends `body` to `{endpoint}{path}` of one replica of `route`, in scheduling class
/// `priority`, and relays its answer.
pub async fn forward(
    state: &GatewayState,
    caller: Caller,
    route: &ModelRoute,
    path: &str,
    priority: &str,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let mut tried: Vec<&str> = Vec::new();
    let mut last_error: Option<String> = None;
    // A replica's own 503, kept to relay when no other replica is left to try.
    let mut refused: Option<(reqwest::Response, InFlight, String)> = None;
    for _ in 0..MAX_ATTEMPTS {
        let stats: Vec<_> = route
            .replicas
            .iter()
            .map(|r| state.replicas.get(&r.id))
            .collect();
        let candidates: Vec<Candidate<'_>> = route
            .replicas
            .iter()
            .zip(&stats)
            .map(|(r, s)| Candidate {
                id: &r.id,
                outstanding: s.outstanding(),
                healthy: s.healthy(),
            })
            .collect();
        let Some(i) = pick(&candidates, &tried) else {
            break;
        };
        let replica = &route.replicas[i];
        tried.push(&replica.id);
        let in_flight = stats[i].start();
        let url = format!("{}{path}", replica.endpoint.trim_end_matches('/'));
        let sent = state
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(PRIORITY_HEADER, priority)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                stats[i].eject(EJECTION);
                tracing::info!(replica = %replica.id, "replica answered 503; ejected, retrying");
                refused = Some((resp, in_flight, replica.id.clone()));
            }
            Ok(resp) => return Ok(relay(resp, in_flight, served(&caller, route, &replica.id))),
            Err(e) if e.is_connect() => {
                stats[i].eject(EJECTION);
                tracing::info!(replica = %replica.id, "cannot connect to replica; ejected: {e}");
                last_error = Some(format!("replica {} at {url}: {e}", replica.id));
            }
            // The replica may have started on it: not retried.
            Err(e) => {
                return Err(GatewayError::Upstream(format!(
                    "replica {} at {url}: {e}",
                    replica.id
                )));
            }
        }
    }
    if let Some((resp, in_flight, replica)) = refused {
        return Ok(relay(resp, in_flight, served(&caller, route, &replica)));
    }
    Err(match last_error {
        Some(e) => GatewayError::Upstream(e),
        None => GatewayError::NoReplica(route.model.clone()),
    })
}

fn served(caller: &Caller, route: &ModelRoute, replica: &str) -> Served {
    Served {
        caller: caller.clone(),
        model: route.model.clone(),
        replica: replica.to_owned(),
        status: 0,
        usage: None,
        complete: false,
    }
}

/// Streams the replica's answer to the client chunk by chunk as it arrives.
fn relay(resp: reqwest::Response, in_flight: InFlight, mut served: Served) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    served.status = status.as_u16();
    let headers: Vec<(header::HeaderName, HeaderValue)> = RELAYED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = resp.headers().get(name.as_str())?;
            Some((
                name.clone(),
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect();
    let body = Relayed {
        inner: Box::pin(resp.bytes_stream()),
        tap: UsageTap::new(served),
        _in_flight: in_flight,
    };
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    out.headers_mut().extend(headers);
    out
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The relayed body: counts the request as outstanding for as long as it lives, and lets
/// metering watch the bytes go by.
struct Relayed {
    inner: ByteStream,
    tap: UsageTap,
    _in_flight: InFlight,
}

impl Stream for Relayed {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = futures::ready!(self.inner.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) => self.tap.observe(chunk),
            Some(Err(e)) => {
                // Mid-stream: the status is sent, so the client sees a cut connection.
                tracing::warn!("replica stream failed mid-answer: {e}");
                self.tap.finish(false);
            }
            None => self.tap.finish(true),
        }
        Poll::Ready(item)
    }
}
