//! Forwarding to a replica: pick one, send the body, and relay the answer as a stream. A
//! connect error or a 503 before any body byte ejects that replica and the request is tried
//! once more on another; once an answer is being relayed it is never retried.
//!
//! The relay holds back the answer's last piece until the request's usage event is durable in
//! the spool: a client that has the whole answer has been metered. A JSON answer of known,
//! modest size is read whole first and sent in one write, head and body together: held back in
//! pieces it would cost the client two writes (the head alone, while the event is synced, then
//! the rest) and a wake-up more, which on loopback costs as much CPU as the proxying itself.

use std::pin::Pin;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::{Stream, StreamExt};
// Batch keys' and `service_tier: flex`'s class: work that can wait, so it waits out a site's
// demand-response event instead of moving.
use wattmesh_proto::gateway::DEFERRABLE_PRIORITY as DEFERRABLE_CLASS;
use wattmesh_proto::gateway::{ModelRoute, PRIORITY_HEADER, PROMPT_TOKENS_HEADER, RouteReplica};
use wattmesh_proto::usage::Outcome;

use crate::GatewayState;
use crate::error::GatewayError;
use crate::metering::{BodyWatch, Meter};
use crate::replicas::{EJECTION, InFlight};
use crate::routing::{Access, Candidate, pick};

/// JSON answers up to this size (by `Content-Length`) are read whole before the client gets
/// anything; longer ones, and streams, are relayed as they come.
const WHOLE_ANSWER_BYTES: u64 = 1 << 20;

/// The first try and one retry.
const MAX_ATTEMPTS: usize = 2;

/// Response headers relayed from the replica besides the status; the rest (connection
/// management, lengths) belong to each hop.
const RELAYED_HEADERS: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

/// The header a request's id travels on: to the replica, and back to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What to send upstream, besides the route.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub path: &'a str,
    /// The engine class: `high`, `normal` or `low`.
    pub priority: &'a str,
    pub body: Bytes,
    /// The answer is an SSE stream; `strip_usage`: remove the usage the client did not ask for.
    pub stream: bool,
    pub strip_usage: bool,
}

/// Sends the request to one replica of `route` and relays its answer, metered by `meter`.
/// When no replica answers, the request is metered as failed and the error returned.
pub async fn forward(
    state: &GatewayState,
    route: &ModelRoute,
    out: Outgoing<'_>,
    mut meter: Meter,
) -> Result<Response, GatewayError> {
    let mut tried: Vec<&str> = Vec::new();
    let mut last_error: Option<String> = None;
    // A replica's own 503, kept to relay when no other replica is left to try.
    let mut refused: Option<(reqwest::Response, InFlight, usize)> = None;
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
                access: Access::of(r.dedicated_to.as_deref(), &meter.event.tenant),
                shedding: r.shedding,
            })
            .collect();
        // Batch work waits out a site's demand-response event; interactive work moves.
        let deferrable = out.priority == DEFERRABLE_CLASS;
        let Some(i) = pick(&candidates, &tried, deferrable) else {
            break;
        };
        let replica = &route.replicas[i];
        tried.push(&replica.id);
        let in_flight = stats[i].start();
        let url = format!("{}{}", replica.endpoint.trim_end_matches('/'), out.path);
        if tried.len() == 1 {
            state.metrics.overhead(meter.started.elapsed());
        }
        let mut request = state
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(PRIORITY_HEADER, out.priority)
            .header(REQUEST_ID_HEADER, &meter.event.request_id);
        if let Some(token) = &replica.access_token {
            request = request.bearer_auth(token);
        }
        let sent = request.body(out.body.clone()).send().await;
        match sent {
            // A replica that does not know our credential was restarted with a new one the
            // config has not brought yet: another replica may take the request.
            Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                stats[i].eject(EJECTION);
                tracing::warn!(replica = %replica.id, "replica refused the gateway's credential; ejected, retrying");
                last_error = Some(format!("replica {} refused our credential", replica.id));
            }
            Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                stats[i].eject(EJECTION);
                tracing::info!(replica = %replica.id, "replica answered 503; ejected, retrying");
                refused = Some((resp, in_flight, i));
            }
            Ok(resp) => {
                served_by(&mut meter, route, i);
                return relay(resp, in_flight, meter, &out).await;
            }
            Err(e) if e.is_connect() => {
                stats[i].eject(EJECTION);
                tracing::info!(replica = %replica.id, "cannot connect to replica; ejected: {e}");
                last_error = Some(format!("replica {} at {url}: {e}", replica.id));
            }
            // The replica may have started on it: not retried.
            Err(e) => {
                served_by(&mut meter, route, i);
                meter.finish_detached(Outcome::Failed, 502, None, 0);
                return Err(GatewayError::Upstream(format!(
                    "replica {} at {url}: {e}",
                    replica.id
                )));
            }
        }
    }
    if let Some((resp, in_flight, i)) = refused {
        served_by(&mut meter, route, i);
        return relay(resp, in_flight, meter, &out).await;
    }
    meter.finish_detached(Outcome::Failed, 503, None, 0);
    let held_back = |r: &RouteReplica| r.shedding && state.replicas.get(&r.id).healthy();
    Err(match last_error {
        Some(e) => GatewayError::Upstream(e),
        None if out.priority == DEFERRABLE_CLASS && route.replicas.iter().any(held_back) => {
            GatewayError::Shedding(route.model.clone())
        }
        None => GatewayError::NoReplica(route.model.clone()),
    })
}

/// Notes in the usage event where the request went.
fn served_by(meter: &mut Meter, route: &ModelRoute, i: usize) {
    let r = &route.replicas[i];
    meter.event.deployment.clone_from(&r.deployment);
    meter.event.replica.clone_from(&r.id);
    meter.event.site.clone_from(&r.site);
    meter.event.region.clone_from(&r.region);
}

/// Relays the replica's answer: streamed chunk by chunk as it arrives, or, for a JSON answer of
/// known size up to [`WHOLE_ANSWER_BYTES`], read whole, metered, and sent at once.
async fn relay(
    resp: reqwest::Response,
    in_flight: InFlight,
    mut meter: Meter,
    out: &Outgoing<'_>,
) -> Result<Response, GatewayError> {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
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
    // Error answers are JSON even on a streamed request.
    let sse = out.stream && status.is_success();
    if sse {
        meter.streamed_prompt_tokens = resp
            .headers()
            .get(PROMPT_TOKENS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
    }
    let whole = (!sse)
        .then(|| resp.content_length())
        .flatten()
        .filter(|&len| len <= WHOLE_ANSWER_BYTES);
    let mut relay = Relay {
        inner: Box::pin(resp.bytes_stream()),
        watch: if sse {
            BodyWatch::sse(out.strip_usage)
        } else {
            BodyWatch::json()
        },
        meter: Some(meter),
        status: status.as_u16(),
        done: false,
        _in_flight: in_flight,
    };
    let body = match whole {
        Some(len) => {
            // Dropped before the end (the client went away), the relay meters the request as
            // cancelled, as a streamed one would be.
            let mut answer = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            while let Some(piece) = relay.next().await {
                match piece {
                    Ok(bytes) => answer.extend_from_slice(&bytes),
                    Err(e) => return Err(GatewayError::Upstream(e.to_string())),
                }
            }
            Body::from(answer)
        }
        None => Body::from_stream(futures::stream::unfold(relay, |mut relay| async move {
            let item = relay.next().await?;
            Some((item, relay))
        })),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    Ok(response)
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The relayed body: the end held back by the watch, the meter to finish, the replica counted
/// as outstanding for as long as it lives.
struct Relay {
    inner: ByteStream,
    watch: BodyWatch,
    meter: Option<Meter>,
    status: u16,
    done: bool,
    _in_flight: InFlight,
}

impl Relay {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        loop {
            match self.inner.next().await {
                Some(Ok(chunk)) => {
                    if let Some(m) = self.meter.as_mut() {
                        m.first_byte.get_or_insert_with(Instant::now);
                    }
                    let piece = self.watch.push(chunk);
                    if !piece.is_empty() {
                        return Some(Ok(piece));
                    }
                }
                Some(Err(e)) => {
                    // Mid-answer: the status is sent, so the client sees a cut connection.
                    tracing::warn!("replica stream failed mid-answer: {e}");
                    self.done = true;
                    self.end(Outcome::Failed).await;
                    return Some(Err(std::io::Error::other(e)));
                }
                None => {
                    self.done = true;
                    let outcome = if (200..300).contains(&self.status) {
                        Outcome::Completed
                    } else {
                        Outcome::Failed
                    };
                    if !self.end(outcome).await {
                        return Some(Err(std::io::Error::other("usage spool failed")));
                    }
                    let last = self.watch.finish();
                    return (!last.is_empty()).then_some(Ok(last));
                }
            }
        }
    }

    /// Writes the usage event and waits for it to be durable; false if it could not be.
    async fn end(&mut self, outcome: Outcome) -> bool {
        let Some(meter) = self.meter.take() else {
            return true;
        };
        let usage = self.watch.usage();
        let chunks = self.watch.content_chunks();
        match meter.finish(outcome, self.status, usage, chunks).await {
            Ok(()) => true,
            Err(e) => {
                // Unbilled tokens are lost money: the client does not get the end either.
                tracing::error!("could not spool a usage event; cutting the answer: {e}");
                false
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away before the end.
        if let Some(meter) = self.meter.take() {
            meter.finish_detached(
                Outcome::Cancelled,
                self.status,
                self.watch.usage(),
                self.watch.content_chunks(),
            );
        }
    }
}
