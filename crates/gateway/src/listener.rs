//! The gateway's accept loop: serves the [`router`](crate::router) over HTTP/1 on a listener,
//! with what `axum::serve` has no knobs for (a fuzzer found each one missing):
//!
//! - **A connection cap.** At most `max_connections` connections are served at once. Beyond
//!   it the loop stops calling `accept`, so new connections wait in the kernel's listen backlog
//!   and are served, in order, as slots free up. Waiting rather than refusing: a burst is
//!   absorbed instead of being answered with resets, the waiting costs the gateway nothing
//!   (no task, no buffer), and clients' own connect and request timeouts still apply. When the
//!   backlog itself is full, the kernel drops new handshakes and clients retry them.
//! - **A header deadline.** A request's headers must arrive within `header_read_timeout` of
//!   its first byte (of accepting the connection, for its first request); else the connection
//!   is closed. A client that opens connections and trickles headers holds nothing for long.
//! - **An idle deadline.** A kept-alive connection with no request in flight is closed after
//!   `idle_timeout`.
//!
//! The body deadline is not here: it is [`read_limited`](crate::body::read_limited)'s, because
//! only the handler knows when it has read what it needs. Nothing bounds a request in flight
//! (reading its body excepted): a stream may legitimately run for minutes.
//!
//! Why our own deadlines rather than hyper's `header_read_timeout`: hyper starts that timer as
//! soon as a connection goes idle, so it doubles as an idle timeout of the same length. Ours
//! tell the two apart, as Go's `ReadHeaderTimeout` and `IdleTimeout` do: each connection's
//! reads and requests in flight feed a small `Activity` record, and `next_phase`, a pure
//! function, says which deadline applies.
//!
//! On shutdown the loop stops accepting (the listener is dropped, so the backlog is refused)
//! and asks every connection to close after its request in flight; `serve` returns once all
//! have. Dropping the `serve` future (the caller's grace period is over) aborts them all.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Bytes, HttpBody};
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::GatewayOptions;

/// How many connections are served at once and how long they may stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From a request's first byte (from accept, on a new connection) to its last header.
    pub header_read_timeout: Duration,
    /// How long a connection may sit with no request in flight.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits in `options`.
    pub fn of(options: &GatewayOptions) -> Self {
        Self {
            max_connections: options.max_connections,
            header_read_timeout: options.header_read_timeout,
            idle_timeout: options.idle_timeout,
        }
    }

    fn timeout(&self, phase: Phase) -> Option<Duration> {
        match phase {
            Phase::Fresh | Phase::Head => Some(self.header_read_timeout),
            Phase::Idle => Some(self.idle_timeout),
            Phase::Busy => None,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown`, then lets each connection
/// finish its request in flight and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // A cap of 0 would serve nothing, ever.
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    // Hyper's header timer would also close idle connections at the same deadline; ours below
    // tells them apart.
    http.header_read_timeout(None);
    let http = Arc::new(http);
    // Owns the connections: dropping `serve` (the grace period is over) aborts them.
    let mut connections = JoinSet::new();
    loop {
        // Forget the connections that ended (their slots are back already).
        while connections.try_join_next().is_some() {}
        // A slot first: at the cap, new connections wait in the backlog, not in our memory.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        // Streams are many small SSE events: each goes out as soon as it is written.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "TCP_NODELAY: {e}");
        }
        let (http, app, shutdown) = (http.clone(), app.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(&http, stream, app, limits, shutdown).await;
            tracing::trace!(%peer, "connection closed");
        });
    }
    // Stop accepting: what waits in the backlog is refused, not left hanging.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Accept errors: a connection that died in the backlog is the client's business; anything
/// else (out of file descriptors, most often) is ours, so back off rather than spin.
async fn accept_failed(e: io::Error, shutdown: &CancellationToken) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!("accepting a connection failed: {e}; retrying in 1 s");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

/// One connection: hyper serves it while its deadlines watch; shutdown asks it to close after
/// the request in flight.
async fn serve_connection(
    http: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(watch::Sender::new(Activity::default()));
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let seen = activity.subscribe();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = Busy::begin(activity.clone());
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await?;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let mut conn = pin!(http.serve_connection(io, service));
    let mut deadlines = pin!(deadlines(seen, limits));
    tokio::select! {
        served = conn.as_mut() => return log_end(served),
        () = deadlines.as_mut() => return,
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        served = conn => log_end(served),
        () = deadlines => {}
    }
}

fn log_end(served: Result<(), hyper::Error>) {
    if let Err(e) = served {
        tracing::debug!("connection ended: {e}");
    }
}

// === deadlines ===

/// What a connection has been doing, as its reads and requests report it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Activity {
    /// Requests begun on this connection. The watcher may see only the latest of several
    /// changes: a short request can begin and end between two looks, and this tells it so.
    started: u64,
    /// Requests whose answer has not been sent whole yet.
    in_flight: usize,
    /// Whether bytes arrived since the last request ended: the next request has begun.
    read_while_idle: bool,
}

/// Which deadline a connection is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted, no request yet: the header deadline, from accept.
    Fresh,
    /// A request in flight: no deadline here.
    Busy,
    /// Kept alive with nothing in flight: the idle deadline.
    Idle,
    /// A new request's first bytes arrived: the header deadline, from then.
    Head,
}

/// The phase a connection in `phase` moves to when its activity reads `now`, having read
/// `started_before` requests begun when last seen.
fn next_phase(phase: Phase, started_before: u64, now: Activity) -> Phase {
    // Requests came and went unseen: the connection was busy in between.
    let phase = if now.started == started_before {
        phase
    } else {
        Phase::Busy
    };
    match phase {
        _ if now.in_flight > 0 => Phase::Busy,
        Phase::Busy | Phase::Idle if now.read_while_idle => Phase::Head,
        Phase::Busy => Phase::Idle,
        phase => phase,
    }
}

/// Completes when the connection's deadline passes: the caller closes it then.
async fn deadlines(mut seen: watch::Receiver<Activity>, limits: ConnectionLimits) {
    let mut phase = Phase::Fresh;
    let mut started = 0;
    let mut deadline = limits.timeout(phase).map(|t| Instant::now() + t);
    loop {
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = expired => {
                tracing::debug!(?phase, "closing a connection past its deadline");
                return;
            }
            changed = seen.changed() => {
                if changed.is_err() {
                    // The connection is gone; its own future ends the caller's select.
                    return std::future::pending().await;
                }
                let now = *seen.borrow_and_update();
                let next = next_phase(phase, started, now);
                // A new spell restarts its deadline, even one of the same phase (idle, a
                // request came and went unseen, idle again).
                if next != phase || now.started != started {
                    deadline = limits.timeout(next).map(|t| Instant::now() + t);
                }
                (phase, started) = (next, now.started);
            }
        }
    }
}

/// Held while a request is in flight, from its headers to the last byte of its answer.
struct Busy(Arc<watch::Sender<Activity>>);

impl Busy {
    fn begin(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.started += 1;
            a.in_flight += 1;
            a.read_while_idle = false;
        });
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .send_modify(|a| a.in_flight = a.in_flight.saturating_sub(1));
    }
}

/// An answer's body, holding its request's [`Busy`] until hyper has sent it and drops it.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, reporting bytes that arrive while no request is in flight.
struct Watched {
    inner: TcpStream,
    activity: Arc<watch::Sender<Activity>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Only the first read of an idle spell changes anything (and wakes the watcher).
            self.activity.send_if_modified(|a| {
                let starts = a.in_flight == 0 && !a.read_while_idle;
                a.read_while_idle |= starts;
                starts
            });
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(started: u64, in_flight: usize, read_while_idle: bool) -> Activity {
        Activity {
            started,
            in_flight,
            read_while_idle,
        }
    }

    #[test]
    fn phases_follow_requests_and_reads() {
        use Phase::*;
        // (from, requests begun when last seen, activity seen now, to)
        let cases = [
            // A new connection keeps its accept-time header deadline while its bytes arrive.
            (Fresh, 0, at(0, 0, true), Fresh),
            (Fresh, 0, at(1, 1, false), Busy),
            // A whole request came and went between two looks: busy, then idle.
            (Fresh, 0, at(1, 0, false), Idle),
            (Idle, 3, at(4, 0, false), Idle),
            (Idle, 3, at(4, 0, true), Head),
            // A request ends: idle, unless the next one has started arriving.
            (Busy, 1, at(1, 0, false), Idle),
            (Busy, 1, at(1, 0, true), Head),
            (Busy, 1, at(2, 1, false), Busy),
            (Busy, 1, at(3, 2, false), Busy),
            (Idle, 1, at(1, 0, true), Head),
            (Idle, 1, at(1, 0, false), Idle),
            (Idle, 1, at(2, 1, false), Busy),
            // Headers complete: the request is in flight.
            (Head, 1, at(2, 1, false), Busy),
            (Head, 1, at(1, 0, true), Head),
        ];
        for (from, before, activity, to) in cases {
            assert_eq!(
                next_phase(from, before, activity),
                to,
                "{from:?}, {before} begun before, now {activity:?}"
            );
        }
    }

    #[test]
    fn only_a_request_in_flight_has_no_deadline() {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let got: Vec<_> = [Phase::Fresh, Phase::Busy, Phase::Idle, Phase::Head]
            .into_iter()
            .map(|p| limits.timeout(p).map(|t| t.as_secs()))
            .collect();
        assert_eq!(got, [Some(10), None, Some(60), Some(10)]);
    }
}
