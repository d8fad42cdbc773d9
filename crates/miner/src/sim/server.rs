//! The simulator's TCP side: one listener per unit, one request per connection, as a miner.
//!
//! A request ends at a NUL, at EOF, or as soon as the bytes hold a whole JSON value (clients
//! such as pyasic neither send a NUL nor half-close). Whatever arrives gets a reply: a request
//! that is too long or not JSON gets an error reply, never a panic or a silent close.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::de::IgnoredAny;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::commands::sim_code;
use super::{Fault, Shared};

/// The longest request read; real ones are a few dozen bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection is drained after the reply, for the client to close first.
const LINGER: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections for unit `index` until the fleet shuts down.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, index: usize) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared_for_task = Arc::clone(&shared);
                shared
                    .tracker
                    .spawn(connection(stream, shared_for_task, index));
            }
            Err(error) => {
                tracing::warn!(unit = index, %error, "simulated miner: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, shared: Arc<Shared>, index: usize) {
    match shared.fault(index) {
        Fault::None => {}
        Fault::Silent => {
            // Holds the connection open and never answers, as a hung miner does.
            shared.shutdown.cancelled().await;
            return;
        }
        Fault::Hangup => return,
    }
    let guard = shared.connection_started();
    let read = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        read = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)) => read,
    };
    let reply = match read {
        Ok(Ok(Some(bytes))) => shared.handle(index, &bytes),
        Ok(Ok(None)) => shared.refuse(
            sim_code::INVALID_JSON,
            &format!("Request longer than {MAX_REQUEST_BYTES} bytes"),
        ),
        // The client went away or never finished its request: nobody to answer.
        Ok(Err(_)) | Err(_) => return,
    };
    // Counted as served before the reply leaves, so a client that reuses its slot the moment
    // it has the reply is never counted twice.
    drop(guard);
    if let Err(error) = stream.write_all(&reply).await {
        tracing::debug!(unit = index, %error, "simulated miner: client left before the reply");
        return;
    }
    let _ = stream.shutdown().await;
    // Reads what the client still sends (the rest of an over-long request) until it closes:
    // closing with unread bytes would reset the connection and could destroy the reply
    // before the client reads it.
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut drained = 0;
        while drained <= MAX_REQUEST_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    tokio::select! {
        () = shared.shutdown.cancelled() => {}
        _ = tokio::time::timeout(LINGER, drain) => {}
    }
}

/// Reads one request: `Some(bytes)` when it ended, `None` when it went past the limit.
async fn read_request(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        let Some(read) = chunk.get(..n).filter(|read| !read.is_empty()) else {
            return Ok(Some(request));
        };
        if let Some(nul) = read.iter().position(|&b| b == 0) {
            request.extend_from_slice(&read[..nul]);
            return Ok((request.len() <= MAX_REQUEST_BYTES).then_some(request));
        }
        request.extend_from_slice(read);
        if request.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
        if holds_a_value(&request) {
            return Ok(Some(request));
        }
    }
}

/// Whether `bytes` already hold a whole JSON value, or something that can never become one
/// (a syntax error is final: it gets its error reply now rather than after a timeout).
fn holds_a_value(bytes: &[u8]) -> bool {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => true,
        Some(Err(e)) => !e.is_eof(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::holds_a_value;

    #[test]
    fn a_request_ends_with_its_json_value_or_its_first_error() {
        let cases: &[(&[u8], bool)] = &[
            (b"", false),
            (b"  ", false),
            (b"{\"command\":", false),
            (b"{\"command\":\"summary\"", false),
            (b"{\"command\":\"summary\"}", true),
            (b"{\"command\":\"summary\"}  ", true),
            (b"garbage", true),
            (b"{]", true),
        ];
        for (bytes, complete) in cases {
            assert_eq!(
                holds_a_value(bytes),
                *complete,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
