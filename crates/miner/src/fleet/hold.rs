//! Holding miners asleep through an event: FACTS.md's field failure of miners that wake up by
//! themselves mid-event, answered by polling each one and putting back to sleep any that
//! draws or hashes again.

use std::net::SocketAddr;

use futures::stream::{self, StreamExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{FleetError, FleetOptions, Telemetry, poll_all};
use crate::client::{MinerClient, MinerError};
use crate::luxos::{Curtail, with_session};

/// One miner's part of [`hold_asleep`].
#[derive(Debug)]
pub struct HoldMiner {
    pub addr: SocketAddr,
    /// When it was found awake and put back to sleep (acknowledged).
    pub reslept_at: Vec<Instant>,
    pub last: Option<Telemetry>,
    /// The last error reading or re-sleeping it; the hold goes on regardless.
    pub error: Option<MinerError>,
}

/// What [`hold_asleep`] did.
#[derive(Debug)]
pub struct HoldReport {
    pub started: Instant,
    pub miners: Vec<HoldMiner>,
}

impl HoldReport {
    /// The miners that drifted awake and were put back to sleep.
    pub fn reslept(&self) -> Vec<SocketAddr> {
        self.miners
            .iter()
            .filter(|m| !m.reslept_at.is_empty())
            .map(|m| m.addr)
            .collect()
    }
}

/// Keeps `miners` asleep until `until` or `stop`: every `poll_every`, reads each one and puts
/// back to sleep any that draws more than `asleep_max_w` or hashes (FACTS.md: miners wake up by
/// themselves during events). A re-slept miner gets `confirm_within` to ramp down before it
/// can be re-slept again. Start it once `sleep` has confirmed: a miner still ramping down
/// looks awake and would get one more (harmless) sleep.
pub async fn hold_asleep(
    miners: &[SocketAddr],
    opts: &FleetOptions,
    until: Instant,
    stop: &CancellationToken,
) -> Result<HoldReport, FleetError> {
    opts.validate()?;
    let clients: Vec<MinerClient> = miners
        .iter()
        .map(|&addr| MinerClient::new(addr, opts.timeout))
        .collect();
    let mut report = HoldReport {
        started: Instant::now(),
        miners: miners
            .iter()
            .map(|&addr| HoldMiner {
                addr,
                reslept_at: Vec::new(),
                last: None,
                error: None,
            })
            .collect(),
    };
    let all: Vec<usize> = (0..miners.len()).collect();
    while !stop.is_cancelled() && Instant::now() < until {
        let round = Instant::now();
        let mut awake = Vec::new();
        for (i, reading) in poll_all(&clients, &all, opts.parallelism).await {
            let m = &mut report.miners[i];
            match reading {
                Ok(t) => {
                    m.last = Some(t);
                    let in_grace = m
                        .reslept_at
                        .last()
                        .is_some_and(|&at| round < at + opts.confirm_within);
                    if !opts.is_asleep(&t) && !in_grace {
                        awake.push(i);
                    }
                }
                Err(e) => m.error = Some(e),
            }
        }
        // Built before the stream: see `Operation::command`.
        let resleeps: Vec<_> = awake
            .into_iter()
            .map(|i| {
                let client = clients[i];
                async move {
                    let result = with_session(&client, async |session| {
                        client.curtail(session, Curtail::Sleep).await
                    })
                    .await;
                    (i, result.map(|()| Instant::now()))
                }
            })
            .collect();
        let resleeps = stream::iter(resleeps)
            .buffer_unordered(opts.parallelism)
            .collect::<Vec<_>>()
            .await;
        for (i, result) in resleeps {
            let m = &mut report.miners[i];
            match result {
                Ok(at) => {
                    tracing::info!(miner = %m.addr, "woke up during the event; put back to sleep");
                    m.reslept_at.push(at);
                }
                // The sleep went through; only the logoff failed.
                Err(e @ MinerError::Logoff { .. }) => {
                    m.reslept_at.push(Instant::now());
                    m.error = Some(e);
                }
                Err(e) => m.error = Some(e),
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = sleep_until((round + opts.poll_every).min(until)) => {}
        }
    }
    Ok(report)
}
