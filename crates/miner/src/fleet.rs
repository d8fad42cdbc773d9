//! Fleet operations: put hundreds of LuxOS miners to sleep, wake them in waves, and hold them
//! asleep through an event — each miner's command acknowledged by its reply and confirmed by
//! its own telemetry (`power` and `summary`), never assumed.
//!
//! Parallelism is bounded (`buffer_unordered(parallelism)`): a site's management network and
//! the miners' small control boards do not take a thousand connections at once. An operation
//! commands every miner first, then polls the unconfirmed ones in rounds, so acknowledgements
//! are not delayed behind confirmations. One miner's failure is in its own report and never
//! stops the others. No miner is skipped for drawing little power (FACTS.md: a fleet-wide
//! shutdown once skipped miners below a power floor) — a sleep goes to every miner given.
//!
//! Time is `tokio::time`: reports carry `tokio::time::Instant`s, and waves, polls and
//! deadlines follow the runtime's clock.

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

mod hold;
mod power;

pub use hold::{HoldMiner, HoldReport, hold_asleep};
pub use power::{PowerMinerReport, PowerReport, choose_profile, set_power, set_power_unless};

use crate::client::{MinerClient, MinerError};
use crate::luxos::{Curtail, with_session};

/// How an operation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetOptions {
    /// Miners talked to at once.
    pub parallelism: usize,
    /// Bound on each exchange with a miner (connect, request, reply).
    pub timeout: Duration,
    /// How long after its acknowledgement a miner has to show the new state in its telemetry.
    pub confirm_within: Duration,
    /// Pause between telemetry rounds.
    pub poll_every: Duration,
    /// A miner drawing at most this much (W) may be asleep.
    pub asleep_max_w: f64,
    /// A 5 s hashrate at most this much (TH/s) counts as not hashing.
    pub idle_max_ths: f64,
    /// Miners woken together ([`wake`]).
    pub wave_size: usize,
    /// Time between the starts of two waves.
    pub wave_gap: Duration,
}

impl Default for FleetOptions {
    fn default() -> FleetOptions {
        FleetOptions {
            parallelism: 64,
            timeout: Duration::from_secs(5),
            // Longer than the slowest ramp of FACTS.md's table (an S21 takes 120 s from asleep
            // to hashing at nominal), so a wake is never judged before the miner could finish it.
            confirm_within: Duration::from_secs(180),
            poll_every: Duration::from_secs(1),
            asleep_max_w: 50.0,
            idle_max_ths: 0.5,
            wave_size: 50,
            wave_gap: Duration::from_secs(30),
        }
    }
}

impl FleetOptions {
    pub(crate) fn validate(&self) -> Result<(), FleetError> {
        let bad = |what: &str| Err(FleetError::BadOptions(what.to_owned()));
        if self.parallelism == 0 || self.wave_size == 0 {
            return bad("parallelism and wave_size must be at least 1");
        }
        if self.timeout.is_zero() || self.poll_every.is_zero() {
            return bad("timeout and poll_every must be longer than zero");
        }
        let threshold = |x: f64| x.is_finite() && x >= 0.0;
        if !threshold(self.asleep_max_w) || !threshold(self.idle_max_ths) {
            return bad("asleep_max_w and idle_max_ths must be finite and not negative");
        }
        Ok(())
    }

    /// Drawing no more than a sleeping miner and not hashing.
    pub fn is_asleep(&self, t: &Telemetry) -> bool {
        t.watts <= self.asleep_max_w && t.ths_5s <= self.idle_max_ths
    }

    /// Hashing more than an idle miner.
    pub fn is_hashing(&self, t: &Telemetry) -> bool {
        t.ths_5s > self.idle_max_ths
    }
}

/// An operation that could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet options: {0}")]
    BadOptions(String),
    /// A power target ([`set_power`]) that is not a finite number of watts above zero.
    #[error("power target {0} W: must be finite and above zero")]
    BadTarget(f64),
}

/// What went wrong with one miner.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Miner(#[from] MinerError),
    /// It acknowledged, but its telemetry never showed the new state in time.
    #[error("miner {addr}: not confirmed within {within:?} ({last})")]
    NotConfirmed {
        addr: SocketAddr,
        within: Duration,
        last: String,
    },
    /// The operation was interrupted after this miner acknowledged, before its telemetry
    /// confirmed it (or before it was commanded at all: then it has no acknowledgement).
    #[error("miner {addr}: not confirmed, the operation was interrupted ({last})")]
    Interrupted { addr: SocketAddr, last: String },
}

impl OpError {
    /// A miner that acknowledged and was not confirmed: in time (`NotConfirmed`), or before
    /// the operation was interrupted.
    pub(crate) fn unconfirmed(
        addr: SocketAddr,
        within: Duration,
        last: String,
        interrupted: bool,
    ) -> OpError {
        if interrupted {
            OpError::Interrupted { addr, last }
        } else {
            OpError::NotConfirmed { addr, within, last }
        }
    }
}

/// A miner's own reading of itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Telemetry {
    pub watts: f64,
    pub ths_5s: f64,
    pub at: Instant,
}

/// Reads `power` and `summary`, joined in one exchange.
pub async fn telemetry(client: &MinerClient) -> Result<Telemetry, MinerError> {
    let (watts, summary) = client.power_and_summary().await?;
    Ok(Telemetry {
        watts,
        ths_5s: summary.ths_5s,
        at: Instant::now(),
    })
}

/// One miner's part of an operation.
#[derive(Debug)]
pub struct MinerReport {
    pub addr: SocketAddr,
    /// When its reply to the command arrived.
    pub acknowledged_at: Option<Instant>,
    /// When its telemetry first showed the new state.
    pub confirmed_at: Option<Instant>,
    /// Its last telemetry.
    pub last: Option<Telemetry>,
    pub error: Option<OpError>,
}

/// A whole operation: one report per miner, in the order the miners were given.
#[derive(Debug)]
pub struct FleetReport {
    pub started: Instant,
    pub miners: Vec<MinerReport>,
}

impl FleetReport {
    /// Whether every miner acknowledged and confirmed without an error.
    pub fn all_confirmed(&self) -> bool {
        self.miners
            .iter()
            .all(|m| m.confirmed_at.is_some() && m.error.is_none())
    }

    /// The miners with an error.
    pub fn failed(&self) -> impl Iterator<Item = &MinerReport> {
        self.miners.iter().filter(|m| m.error.is_some())
    }

    /// From the start to the last acknowledgement, if every miner acknowledged.
    pub fn all_acknowledged_after(&self) -> Option<Duration> {
        self.miners
            .iter()
            .map(|m| m.acknowledged_at.map(|at| at - self.started))
            .try_fold(Duration::ZERO, |max, d| d.map(|d| max.max(d)))
    }
}

/// Puts every miner in `miners` to sleep and confirms each by its telemetry: power at most
/// `asleep_max_w` and a 5 s hashrate of about zero.
pub async fn sleep(miners: &[SocketAddr], opts: &FleetOptions) -> Result<FleetReport, FleetError> {
    opts.validate()?;
    let mut op = Operation::new(miners, opts, Curtail::Sleep);
    // A sleep is never interrupted: it is what an interruption is for.
    op.run(vec![(0..miners.len()).collect()], &CancellationToken::new())
        .await;
    Ok(op.finish(false))
}

/// Wakes `miners` in waves of `wave_size`, `wave_gap` apart (a wave late because the previous
/// one was slow starts at once after it), so the site's load does not jump at once; confirms
/// each by its telemetry showing a hashrate.
pub async fn wake(miners: &[SocketAddr], opts: &FleetOptions) -> Result<FleetReport, FleetError> {
    wake_unless(miners, opts, &CancellationToken::new()).await
}

/// [`wake`], stopping early once `interrupt` is cancelled: no wave starts after it, and the
/// miners commanded are no longer waited for. A wave being commanded is finished first — each
/// command holds a LuxOS session, and one dropped half-way would lock its miner for minutes.
/// Miners never commanded have no acknowledgement; those acknowledged and not yet confirmed
/// carry [`OpError::Interrupted`].
pub async fn wake_unless(
    miners: &[SocketAddr],
    opts: &FleetOptions,
    interrupt: &CancellationToken,
) -> Result<FleetReport, FleetError> {
    opts.validate()?;
    let indices: Vec<usize> = (0..miners.len()).collect();
    let waves = indices
        .chunks(opts.wave_size)
        .map(<[usize]>::to_vec)
        .collect();
    let mut op = Operation::new(miners, opts, Curtail::Wakeup);
    op.run(waves, interrupt).await;
    Ok(op.finish(interrupt.is_cancelled()))
}

/// One running sleep or wake.
struct Operation<'a> {
    opts: &'a FleetOptions,
    clients: Vec<MinerClient>,
    what: Curtail,
    started: Instant,
    reports: Vec<MinerReport>,
    poll_errors: Vec<Option<MinerError>>,
}

impl<'a> Operation<'a> {
    fn new(miners: &[SocketAddr], opts: &'a FleetOptions, what: Curtail) -> Operation<'a> {
        Operation {
            opts,
            clients: miners
                .iter()
                .map(|&addr| MinerClient::new(addr, opts.timeout))
                .collect(),
            what,
            started: Instant::now(),
            reports: miners
                .iter()
                .map(|&addr| MinerReport {
                    addr,
                    acknowledged_at: None,
                    confirmed_at: None,
                    last: None,
                    error: None,
                })
                .collect(),
            poll_errors: miners.iter().map(|_| None).collect(),
        }
    }

    /// Commands each wave at its time and polls the acknowledged miners in between, until
    /// every miner is confirmed or past its deadline.
    async fn run(&mut self, waves: Vec<Vec<usize>>, interrupt: &CancellationToken) {
        let mut waves = waves.into_iter().enumerate().peekable();
        let mut next_poll = None;
        loop {
            if interrupt.is_cancelled() {
                return;
            }
            let now = Instant::now();
            let wave_at = |k: usize| self.started + self.opts.wave_gap.saturating_mul(k as u32);
            if let Some((k, _)) = waves.peek()
                && now >= wave_at(*k)
                && let Some((_, wave)) = waves.next()
            {
                self.command(&wave).await;
                next_poll.get_or_insert(Instant::now() + self.opts.poll_every);
                continue;
            }
            let pending = self.pending(now);
            let next_wave = waves.peek().map(|(k, _)| wave_at(*k));
            match (next_wave, pending.is_empty(), next_poll) {
                (None, true, _) => return,
                (_, false, Some(at)) if now >= at => {
                    self.poll(&pending).await;
                    next_poll = Some(Instant::now() + self.opts.poll_every);
                }
                (wave, _, poll) => {
                    let poll = poll.filter(|_| !pending.is_empty());
                    match wave.into_iter().chain(poll).min() {
                        Some(at) => tokio::select! {
                            _ = sleep_until(at) => {}
                            _ = interrupt.cancelled() => return,
                        },
                        None => return,
                    }
                }
            }
        }
    }

    /// Acknowledged, not confirmed, still within the deadline.
    fn pending(&self, now: Instant) -> Vec<usize> {
        (0..self.reports.len())
            .filter(|&i| {
                let r = &self.reports[i];
                r.confirmed_at.is_none()
                    && r.acknowledged_at
                        .is_some_and(|ack| now < ack + self.opts.confirm_within)
            })
            .collect()
    }

    async fn command(&mut self, indices: &[usize]) {
        let what = self.what;
        // Each future is built before the stream (here and below): a closure in the stream's
        // type makes the operation's future not provably `Send`, and callers spawn it.
        let commands: Vec<_> = indices
            .iter()
            .map(|&i| {
                let client = self.clients[i];
                async move {
                    let mut acknowledged_at = None;
                    let result = with_session(&client, async |session| {
                        client.curtail(session, what).await?;
                        acknowledged_at = Some(Instant::now());
                        Ok(())
                    })
                    .await;
                    (i, acknowledged_at, result)
                }
            })
            .collect();
        let results: Vec<_> = stream::iter(commands)
            .buffer_unordered(self.opts.parallelism)
            .collect()
            .await;
        for (i, acknowledged_at, result) in results {
            let report = &mut self.reports[i];
            report.acknowledged_at = acknowledged_at;
            if let Err(e) = result {
                tracing::warn!(miner = %report.addr, error = %e, "curtail {} failed", what.as_str());
                report.error = Some(e.into());
            }
        }
    }

    async fn poll(&mut self, indices: &[usize]) {
        let readings = poll_all(&self.clients, indices, self.opts.parallelism).await;
        for (i, reading) in readings {
            match reading {
                Ok(t) => {
                    let confirmed = match self.what {
                        Curtail::Sleep => self.opts.is_asleep(&t),
                        Curtail::Wakeup => self.opts.is_hashing(&t),
                    };
                    let report = &mut self.reports[i];
                    report.last = Some(t);
                    if confirmed {
                        report.confirmed_at = Some(t.at);
                    }
                }
                Err(e) => self.poll_errors[i] = Some(e),
            }
        }
    }

    /// The reports, with an error for every acknowledged miner that never confirmed (cut
    /// short by an interruption, if `interrupted`).
    fn finish(self, interrupted: bool) -> FleetReport {
        let within = self.opts.confirm_within;
        let miners = self
            .reports
            .into_iter()
            .zip(self.poll_errors)
            .map(|(mut r, poll_error)| {
                if r.acknowledged_at.is_some() && r.confirmed_at.is_none() && r.error.is_none() {
                    let last = match (&r.last, poll_error) {
                        (Some(t), _) => {
                            format!("last reading {:.0} W, {:.2} TH/s", t.watts, t.ths_5s)
                        }
                        (None, Some(e)) => format!("no reading: {e}"),
                        (None, None) => "no reading".to_owned(),
                    };
                    r.error = Some(OpError::unconfirmed(r.addr, within, last, interrupted));
                }
                r
            })
            .collect();
        FleetReport {
            started: self.started,
            miners,
        }
    }
}

/// Telemetry of `indices`, `parallelism` miners at a time.
pub(crate) async fn poll_all(
    clients: &[MinerClient],
    indices: &[usize],
    parallelism: usize,
) -> Vec<(usize, Result<Telemetry, MinerError>)> {
    let reads: Vec<_> = indices
        .iter()
        .map(|&i| {
            let client = clients[i];
            async move { (i, telemetry(&client).await) }
        })
        .collect();
    stream::iter(reads)
        .buffer_unordered(parallelism)
        .collect()
        .await
}
