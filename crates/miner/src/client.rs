//! A client of the CGMiner API (and so of LuxOS and stock Antminer firmware): one request per
//! TCP connection, as the API wants, every exchange bounded by one timeout.
//!
//! The wire format is [`crate::api`]'s; this module owns the socket. A miner that does not
//! answer, answers too much, answers garbage or refuses gets a [`MinerError`] that names it:
//! fleet operations run on hundreds of miners, and an error without the address is useless.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{self, ApiError, Reply, Request, Summary};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What went wrong talking to one miner. Every variant names the miner.
#[derive(Debug, thiserror::Error)]
pub enum MinerError {
    /// The TCP connection could not be made (refused, unreachable).
    #[error("miner {addr}: cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Connect, write and read did not finish within the client's timeout.
    #[error("miner {addr}: no complete answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    /// The connection broke while writing the request or reading the reply.
    #[error("miner {addr}: connection error: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The reply went past [`api::MAX_REPLY_BYTES`] without ending.
    #[error("miner {addr}: reply longer than {limit} bytes")]
    TooLong { addr: SocketAddr, limit: usize },
    /// The reply was malformed, or the miner refused the command.
    #[error("miner {addr}: {source}")]
    Api {
        addr: SocketAddr,
        #[source]
        source: ApiError,
    },
    /// LuxOS: another session holds the miner (code 402); someone else is operating it.
    #[error("miner {addr}: another session holds it: {msg}")]
    SessionHeld { addr: SocketAddr, msg: String },
    /// An argument we were asked to send cannot be sent (e.g. a `,` inside a profile name,
    /// which would split LuxOS's comma-separated parameter).
    #[error("miner {addr}: invalid argument: {what}")]
    InvalidArgument { addr: SocketAddr, what: String },
    /// LuxOS: the command went through but logging off failed, so the session may stay held
    /// until the miner times it out.
    #[error("miner {addr}: logoff failed: {source}")]
    Logoff {
        addr: SocketAddr,
        #[source]
        source: Box<MinerError>,
    },
}

impl MinerError {
    /// The miner this error is about.
    pub fn addr(&self) -> SocketAddr {
        match self {
            MinerError::Connect { addr, .. }
            | MinerError::Timeout { addr, .. }
            | MinerError::Io { addr, .. }
            | MinerError::TooLong { addr, .. }
            | MinerError::Api { addr, .. }
            | MinerError::SessionHeld { addr, .. }
            | MinerError::InvalidArgument { addr, .. }
            | MinerError::Logoff { addr, .. } => *addr,
        }
    }

    /// The miner's own status code, where it refused a command.
    pub fn code(&self) -> Option<i64> {
        match self {
            MinerError::Api {
                source: ApiError::Refused { code, .. },
                ..
            } => Some(*code),
            MinerError::SessionHeld { .. } => Some(api::code::SESSION_HELD),
            _ => None,
        }
    }
}

/// A client of one miner's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinerClient {
    pub addr: SocketAddr,
    /// Bounds each exchange as a whole: connect, write and read.
    pub timeout: Duration,
}

impl MinerClient {
    /// A client of the miner at `addr`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> MinerClient {
        MinerClient { addr, timeout }
    }

    /// Sends `request` and reads one reply per command, in the request's order. A command the
    /// miner refused comes back as a [`Reply`] with an error status; a joined request refused
    /// as a whole, or a malformed reply, is an error.
    pub async fn call(&self, request: &Request) -> Result<Vec<Reply>, MinerError> {
        let bytes = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| MinerError::Timeout {
                addr: self.addr,
                after: self.timeout,
            })??;
        api::decode_replies(request, &bytes).map_err(|source| self.api_error(source))
    }

    /// Sends one command and returns its reply, or the miner's refusal as an error.
    pub async fn call_one(
        &self,
        command: &str,
        parameter: Option<&str>,
    ) -> Result<Reply, MinerError> {
        let request =
            Request::new(&[command], parameter).map_err(|source| self.api_error(source))?;
        let reply = self
            .call(&request)
            .await?
            .pop()
            .ok_or_else(|| self.api_error(ApiError::Malformed("no reply".into())))?;
        reply
            .into_ok(command)
            .map_err(|source| self.api_error(source))
    }

    /// `summary`: hashrate and shares.
    pub async fn summary(&self) -> Result<Summary, MinerError> {
        let reply = self.call_one("summary", None).await?;
        Summary::from_reply(&reply).map_err(|source| self.api_error(source))
    }

    /// LuxOS `power`: the miner's draw in watts, by its own estimate.
    pub async fn power(&self) -> Result<f64, MinerError> {
        let reply = self.call_one("power", None).await?;
        api::watts(&reply).map_err(|source| self.api_error(source))
    }

    /// `power+summary` joined in one exchange: the draw and the hashrate, as [`power`] and
    /// [`summary`] read them, for half the connections (a site's agent reads every miner
    /// every few seconds).
    ///
    /// [`power`]: MinerClient::power
    /// [`summary`]: MinerClient::summary
    pub async fn power_and_summary(&self) -> Result<(f64, Summary), MinerError> {
        let request =
            Request::new(&["power", "summary"], None).map_err(|source| self.api_error(source))?;
        let mut replies = api::by_command(&request, self.call(&request).await?);
        let mut take = |command: &str| {
            replies
                .remove(command)
                .ok_or_else(|| {
                    self.api_error(ApiError::Malformed(format!("no reply to {command}")))
                })?
                .into_ok(command)
                .map_err(|source| self.api_error(source))
        };
        let (power, summary) = (take("power")?, take("summary")?);
        let watts = api::watts(&power).map_err(|source| self.api_error(source))?;
        let summary = Summary::from_reply(&summary).map_err(|source| self.api_error(source))?;
        Ok((watts, summary))
    }

    /// `stats`: per-chain detail, whose keys differ by firmware (read it loosely).
    pub async fn stats(&self) -> Result<Reply, MinerError> {
        self.call_one("stats", None).await
    }

    /// `devs`: one entry per hashboard.
    pub async fn devs(&self) -> Result<Reply, MinerError> {
        self.call_one("devs", None).await
    }

    /// `pools`: the configured pools and their state.
    pub async fn pools(&self) -> Result<Reply, MinerError> {
        self.call_one("pools", None).await
    }

    /// `version`: firmware and API versions (LuxOS says `LUXminer`).
    pub async fn version(&self) -> Result<Reply, MinerError> {
        self.call_one("version", None).await
    }

    pub(crate) fn api_error(&self, source: ApiError) -> MinerError {
        MinerError::Api {
            addr: self.addr,
            source,
        }
    }

    /// Connects, writes the request and reads until the NUL that ends a reply, or EOF (some
    /// firmware just closes). The caller bounds the whole of it with the timeout.
    async fn exchange(&self, request: &Request) -> Result<Vec<u8>, MinerError> {
        let addr = self.addr;
        let io_error = |source| MinerError::Io { addr, source };
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| MinerError::Connect { addr, source })?;
        stream
            .write_all(&request.encode())
            .await
            .map_err(io_error)?;
        let mut reply = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io_error)?;
            let Some(read) = chunk.get(..n).filter(|read| !read.is_empty()) else {
                break;
            };
            let (body, ended) = match read.iter().position(|&b| b == 0) {
                Some(nul) => (&read[..nul], true),
                None => (read, false),
            };
            if reply.len() + body.len() > api::MAX_REPLY_BYTES {
                return Err(MinerError::TooLong {
                    addr,
                    limit: api::MAX_REPLY_BYTES,
                });
            }
            reply.extend_from_slice(body);
            if ended {
                break;
            }
        }
        Ok(reply)
    }
}
