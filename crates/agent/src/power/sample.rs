//! The sampler: reads the site meter and every miner's telemetry each `sample_every`, queues
//! each [`PowerSample`] for the heartbeats ([`Backlog`]) and publishes the newest on a watch
//! for the DR executor.
//!
//! A round never fails as a whole: a meter that does not answer is a sample with a
//! `meter_error`, a miner that does not answer counts as `unreachable`. Every exchange is
//! bounded by the fleet's `timeout`, and the miners are read `parallelism` at a time, so a
//! round takes about one timeout at worst, not one per dead miner.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use wattmesh_miner::MinerClient;
use wattmesh_miner::fleet::{self, FleetOptions, Telemetry};
use wattmesh_miner::meter::MeterClient;
use wattmesh_proto::energy::{MinerCounts, PowerSample};

use super::backlog::Backlog;
use super::{PowerConfig, now_ms};

/// The shortest time between two rounds, whatever the configuration says: a zero would spin.
const MIN_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Reads the site's meter and miners; owned by the sampler task (the meter client keeps its
/// connection between reads, and sees a frozen meter by comparing them).
pub(crate) struct Sampler {
    site: String,
    miners: Vec<MinerClient>,
    meter: Option<MeterClient>,
    opts: FleetOptions,
    every: Duration,
}

impl Sampler {
    pub fn new(site: &str, config: &PowerConfig) -> Sampler {
        let timeout = config.fleet.timeout;
        Sampler {
            site: site.to_owned(),
            miners: config
                .miners
                .iter()
                .map(|&addr| MinerClient::new(addr, timeout))
                .collect(),
            meter: config
                .meter
                .map(|addr| MeterClient::with_default_unit(addr, timeout)),
            opts: config.fleet.clone(),
            every: config.sample_every.max(MIN_SAMPLE_EVERY),
        }
    }

    /// Samples every `sample_every` until `shutdown`, queueing each sample on `backlog` and
    /// publishing it on `samples`. A round that runs late delays the next rather than
    /// bunching them up.
    pub async fn run(
        mut self,
        samples: watch::Sender<Option<PowerSample>>,
        backlog: Arc<Backlog>,
        shutdown: CancellationToken,
    ) {
        tracing::info!(
            site = %self.site,
            miners = self.miners.len(),
            meter = ?self.meter.as_ref().map(MeterClient::addr),
            every = ?self.every,
            "sampling the site's power"
        );
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut meter_ok = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sample = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = self.round() => s,
            };
            // Say it once when the meter stops answering and once when it is back; every
            // sample carries the error meanwhile.
            match (&sample.meter_error, meter_ok) {
                (Some(e), true) => {
                    tracing::warn!(site = %self.site, "cannot read the site meter: {e}");
                    meter_ok = false;
                }
                (None, false) => {
                    tracing::info!(site = %self.site, "the site meter answers again");
                    meter_ok = true;
                }
                _ => {}
            }
            backlog.push(sample.clone());
            samples.send_replace(Some(sample));
        }
    }

    /// One reading of the meter and of every miner, stamped with the wall clock at its start.
    pub async fn round(&mut self) -> PowerSample {
        let at_ms = now_ms();
        let (meter, miners) = tokio::join!(
            read_meter(self.meter.as_mut()),
            read_miners(&self.miners, self.opts.parallelism),
        );
        let (meter_kw, meter_kwh, meter_error) = meter;
        PowerSample {
            at_ms,
            meter_kw,
            meter_kwh,
            meter_error,
            miners: count(
                &miners.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
                &self.opts,
            ),
        }
    }
}

/// The meter's power and energy, or why it could not be read; all `None` without a meter.
async fn read_meter(meter: Option<&mut MeterClient>) -> (Option<f64>, Option<f64>, Option<String>) {
    let Some(meter) = meter else {
        return (None, None, None);
    };
    match meter.read().await {
        Ok(r) => (Some(r.active_power_kw), Some(r.energy_kwh), None),
        Err(e) => (None, None, Some(e.to_string())),
    }
}

/// Every miner's telemetry (`None`: it did not answer), `parallelism` at a time, in no
/// particular order. The DR executor reads the miners with it too, before applying a plan.
pub(super) async fn read_miners(
    miners: &[MinerClient],
    parallelism: usize,
) -> Vec<(SocketAddr, Option<Telemetry>)> {
    // The reads are built into a Vec first, so no closure type is part of the stream's: a
    // closure returning a borrowing future would make the task's future not provably `Send`.
    let reads: Vec<_> = miners.iter().map(read_miner).collect();
    stream::iter(reads)
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await
}

async fn read_miner(client: &MinerClient) -> (SocketAddr, Option<Telemetry>) {
    match fleet::telemetry(client).await {
        Ok(t) => (client.addr, Some(t)),
        Err(e) => {
            tracing::debug!(miner = %client.addr, "no telemetry: {e}");
            (client.addr, None)
        }
    }
}

/// The counts of one round; pure.
fn count(readings: &[Option<Telemetry>], opts: &FleetOptions) -> MinerCounts {
    let mut counts = MinerCounts {
        total: saturating_u32(readings.len()),
        ..MinerCounts::default()
    };
    for reading in readings {
        let Some(t) = reading else {
            counts.unreachable += 1;
            continue;
        };
        if opts.is_asleep(t) {
            counts.asleep += 1;
        }
        if opts.is_hashing(t) {
            counts.hashing += 1;
        }
        counts.kw += t.watts / 1000.0;
        counts.ths += t.ths_5s;
    }
    counts
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn t(watts: f64, ths_5s: f64) -> Option<Telemetry> {
        Some(Telemetry {
            watts,
            ths_5s,
            at: Instant::now(),
        })
    }

    #[test]
    fn counts_each_miner_by_its_own_telemetry() {
        let opts = FleetOptions::default();
        let cases: [(&str, Vec<Option<Telemetry>>, MinerCounts); 4] = [
            ("no miners", vec![], MinerCounts::default()),
            (
                "hashing, asleep, unreachable",
                vec![t(3500.0, 200.0), t(15.0, 0.0), None],
                MinerCounts {
                    total: 3,
                    hashing: 1,
                    asleep: 1,
                    unreachable: 1,
                    kw: 3.515,
                    ths: 200.0,
                },
            ),
            (
                // Ramping down: no hashrate any more, still drawing: neither.
                "ramping down",
                vec![t(1200.0, 0.0)],
                MinerCounts {
                    total: 1,
                    kw: 1.2,
                    ..MinerCounts::default()
                },
            ),
            (
                "none answer",
                vec![None, None],
                MinerCounts {
                    total: 2,
                    unreachable: 2,
                    ..MinerCounts::default()
                },
            ),
        ];
        for (what, readings, want) in cases {
            let got = count(&readings, &opts);
            assert!(
                (got.kw - want.kw).abs() < 1e-9,
                "{what}: {} kW, want {}",
                got.kw,
                want.kw
            );
            assert_eq!(
                MinerCounts { kw: 0.0, ..got },
                MinerCounts { kw: 0.0, ..want },
                "{what}"
            );
        }
    }
}
