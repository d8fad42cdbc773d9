//! The agent's side of the site meter: [`MeterClient`] reads power, energy and heartbeat in one
//! Modbus request and turns every way that can fail into its own [`MeterError`].
//!
//! Connection policy: the client keeps its TCP connection between reads and drops it on any
//! error that leaves the link in doubt (timeout, I/O error, a malformed reply), so the next read
//! reconnects. Meters allow only a few TCP connections at once (often one to four) and are read
//! every few seconds, so reconnecting per read would churn those scarce slots; a Modbus
//! exception or an impossible value came over a healthy link, so the connection stays.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_modbus::client::Context;
use tokio_modbus::prelude::*;

use super::{DEFAULT_UNIT_ID, DecodeError, READ_LEN, Reading, decode_reading};

/// Why a meter read failed. Each variant is a different thing for an operator to check.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// No TCP connection: refused, unreachable, no route.
    #[error("meter {addr}: cannot connect: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The meter did not answer (or not completely) within the client's timeout.
    #[error("meter {addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// The connection broke during the exchange (closed by the meter, reset).
    #[error("meter {addr}: connection lost during the read: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Bytes came back, but not a Modbus TCP answer to our request.
    #[error("meter {addr}: not a valid answer to our request: {detail}")]
    Malformed { addr: SocketAddr, detail: String },
    /// The meter answered with a Modbus exception.
    #[error(
        "meter {addr}: Modbus exception 0x{code:02X} ({exception}) reading {count} registers at {start}"
    )]
    Exception {
        addr: SocketAddr,
        code: u8,
        exception: ExceptionCode,
        start: u16,
        count: u16,
    },
    /// The meter answered with a value no meter can measure.
    #[error("meter {addr}: {source}")]
    BadValue {
        addr: SocketAddr,
        #[source]
        source: DecodeError,
    },
    /// The heartbeat did not move since the previous read: the meter serves a stale image.
    #[error("meter {addr}: frozen, the heartbeat counter is stuck at {counter}")]
    Frozen { addr: SocketAddr, counter: u32 },
}

/// Reads one site meter over Modbus TCP. Owned by one task: `read` takes `&mut self`.
pub struct MeterClient {
    addr: SocketAddr,
    unit_id: u8,
    timeout: Duration,
    conn: Option<Context>,
    /// The heartbeat of the previous successful exchange, to see a frozen meter.
    last_counter: Option<u32>,
}

impl std::fmt::Debug for MeterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterClient")
            .field("addr", &self.addr)
            .field("unit_id", &self.unit_id)
            .field("timeout", &self.timeout)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl MeterClient {
    /// A client for the meter at `addr`, unit `unit_id`; each read (connecting included) gives
    /// up after `timeout`. Connects lazily, on the first read.
    pub fn new(addr: SocketAddr, unit_id: u8, timeout: Duration) -> MeterClient {
        MeterClient {
            addr,
            unit_id,
            timeout,
            conn: None,
            last_counter: None,
        }
    }

    /// A client for unit [`DEFAULT_UNIT_ID`].
    pub fn with_default_unit(addr: SocketAddr, timeout: Duration) -> MeterClient {
        MeterClient::new(addr, DEFAULT_UNIT_ID, timeout)
    }

    /// The meter's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads power, energy and heartbeat. A heartbeat equal to the previous read's is
    /// [`MeterError::Frozen`]; the first read after creating the client cannot tell.
    pub async fn read(&mut self) -> Result<Reading, MeterError> {
        let words = match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(Ok(words)) => words,
            Ok(Err(err)) => {
                if !matches!(err, MeterError::Exception { .. }) {
                    self.conn = None;
                }
                return Err(err);
            }
            Err(_elapsed) => {
                // A late answer could still arrive on this connection and be taken for the
                // next one's: start afresh.
                self.conn = None;
                return Err(MeterError::Timeout {
                    addr: self.addr,
                    timeout: self.timeout,
                });
            }
        };
        let reading = decode_reading(&words).map_err(|source| match source {
            DecodeError::Length { .. } => MeterError::Malformed {
                addr: self.addr,
                detail: source.to_string(),
            },
            DecodeError::Impossible { .. } => MeterError::BadValue {
                addr: self.addr,
                source,
            },
        });
        let reading = match reading {
            Ok(reading) => reading,
            Err(err) => {
                if matches!(err, MeterError::Malformed { .. }) {
                    self.conn = None;
                }
                return Err(err);
            }
        };
        let previous = self.last_counter.replace(reading.counter);
        if previous == Some(reading.counter) {
            return Err(MeterError::Frozen {
                addr: self.addr,
                counter: reading.counter,
            });
        }
        Ok(reading)
    }

    /// One request and its answer, connecting first if needed; no timeout of its own.
    async fn exchange(&mut self) -> Result<Vec<u16>, MeterError> {
        let addr = self.addr;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let conn = tcp::connect_slave(addr, Slave(self.unit_id))
                    .await
                    .map_err(|source| MeterError::Connect { addr, source })?;
                self.conn.insert(conn)
            }
        };
        // `Client::call` rather than `Reader::read_holding_registers`: the latter only
        // debug-asserts the number of registers that came back, which would panic on a bad
        // meter in debug builds; we check it ourselves.
        let answer = conn.call(Request::ReadHoldingRegisters(0, READ_LEN)).await;
        match answer {
            Ok(Ok(Response::ReadHoldingRegisters(words))) => Ok(words),
            Ok(Ok(other)) => Err(MeterError::Malformed {
                addr,
                detail: format!("answer of another function: {other:?}"),
            }),
            Ok(Err(exception)) => Err(MeterError::Exception {
                addr,
                code: u8::from(exception),
                exception,
                start: 0,
                count: READ_LEN,
            }),
            Err(tokio_modbus::Error::Protocol(err)) => Err(MeterError::Malformed {
                addr,
                detail: err.to_string(),
            }),
            Err(tokio_modbus::Error::Transport(err)) => Err(transport_error(addr, err)),
        }
    }
}

/// Sorts an I/O error of the exchange: undecodable bytes are a malformed answer, the rest a
/// broken connection.
fn transport_error(addr: SocketAddr, err: io::Error) -> MeterError {
    use io::ErrorKind::*;
    match err.kind() {
        InvalidData | InvalidInput => MeterError::Malformed {
            addr,
            detail: err.to_string(),
        },
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | TimedOut => {
            MeterError::Transport { addr, source: err }
        }
        // tokio-modbus reports a connection closed before any byte of the answer as
        // `io::Error::last_os_error()`: whatever errno the thread last left behind (often
        // EAGAIN or "Success"), which would mislead whoever reads the log. Say what happened.
        _ if err.raw_os_error().is_some() => MeterError::Transport {
            addr,
            source: io::Error::new(
                UnexpectedEof,
                "the meter closed the connection without answering",
            ),
        },
        // tokio-util's framing says only "bytes remaining on stream" when the peer hangs up
        // inside a frame.
        Other if err.to_string() == "bytes remaining on stream" => MeterError::Transport {
            addr,
            source: io::Error::new(
                UnexpectedEof,
                "the meter closed the connection in the middle of an answer",
            ),
        },
        _ => MeterError::Transport { addr, source: err },
    }
}
