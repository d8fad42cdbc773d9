//! Setting miners' power targets: the planner's "these miners hash at W watts each", carried
//! out with the power profiles LuxOS has built in (a miner takes no arbitrary wattage, only
//! its own steps), and confirmed by each miner's own `power` reading, never assumed.
//!
//! Per miner: read its `profiles`, choose the highest at or below the target (or its lowest,
//! reported as clamped, when the target is below all of them), read its telemetry, and
//! `profileset` inside a session. LuxOS's `profiles` does not say which one is current, so the
//! profile is always set: one more exchange, and it is idempotent. A miner that is asleep is
//! given the profile too, so that it wakes at the target, but it is not woken — sleep is
//! another operation's decision — and so its draw is not awaited. Like [`super::sleep`], every
//! miner is commanded first, then the unconfirmed ones are polled in rounds; one miner's
//! failure stays in its own report.

use std::net::SocketAddr;

use futures::stream::{self, StreamExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{FleetError, FleetOptions, OpError, poll_all, telemetry};
use crate::api::ApiError;
use crate::client::{MinerClient, MinerError};
use crate::luxos::{Profile, with_session};

/// Share of a profile's watts a miner's reading may be off by and still confirm it: miners
/// estimate their own draw, and the reading is rounded.
const TOLERANCE: f64 = 0.05;

/// One miner's part of [`set_power`].
#[derive(Debug)]
pub struct PowerMinerReport {
    pub addr: SocketAddr,
    /// The profile chosen for it, once its profiles were read.
    pub profile: Option<String>,
    /// That profile's watts.
    pub profile_w: Option<f64>,
    /// The target was below every profile it has: it got its lowest, which draws more.
    pub clamped: bool,
    /// It was asleep: it got the profile but was not woken, and its draw was not awaited.
    pub asleep: bool,
    /// When its reply to `profileset` arrived.
    pub acknowledged_at: Option<Instant>,
    /// When its `power` first read within the tolerance of the profile's watts.
    pub confirmed_at: Option<Instant>,
    /// Its last `power` reading, W.
    pub last_w: Option<f64>,
    pub error: Option<OpError>,
}

/// A whole [`set_power`]: one report per miner, in the order the miners were given.
#[derive(Debug)]
pub struct PowerReport {
    pub started: Instant,
    pub miners: Vec<PowerMinerReport>,
}

impl PowerReport {
    /// Whether every miner took its profile without an error, and every awake one confirmed
    /// it by its draw.
    pub fn all_confirmed(&self) -> bool {
        self.miners
            .iter()
            .all(|m| m.error.is_none() && (m.asleep || m.confirmed_at.is_some()))
    }

    /// The miners with an error.
    pub fn failed(&self) -> impl Iterator<Item = &PowerMinerReport> {
        self.miners.iter().filter(|m| m.error.is_some())
    }
}

/// The profile for `target_w`: the highest whose watts are at most `target_w`, with `false`;
/// if every profile draws more, the lowest, with `true` (clamped). `None` for no profiles.
/// Among profiles of equal watts, the first listed.
pub fn choose_profile(profiles: &[Profile], target_w: f64) -> Option<(Profile, bool)> {
    let mut highest_within: Option<&Profile> = None;
    let mut lowest: Option<&Profile> = None;
    // Strict comparisons keep the first of equals, whatever the miner's order.
    for p in profiles {
        if p.watts <= target_w && highest_within.is_none_or(|b| p.watts > b.watts) {
            highest_within = Some(p);
        }
        if lowest.is_none_or(|b| p.watts < b.watts) {
            lowest = Some(p);
        }
    }
    match highest_within {
        Some(p) => Some((p.clone(), false)),
        None => lowest.map(|p| (p.clone(), true)),
    }
}

/// Sets every miner in `miners` to the profile [`choose_profile`] picks for `target_w` watts,
/// and confirms each awake one by its `power` reading coming within max(5 % of the profile's
/// watts, `asleep_max_w`) of the profile within `confirm_within` of its acknowledgement.
/// A target that is not finite or not above zero is refused before any miner is contacted.
pub async fn set_power(
    miners: &[SocketAddr],
    target_w: f64,
    opts: &FleetOptions,
) -> Result<PowerReport, FleetError> {
    set_power_unless(miners, target_w, opts, &CancellationToken::new()).await
}

/// [`set_power`], no longer waiting for confirmations once `interrupt` is cancelled (the
/// commands themselves always finish: each holds a LuxOS session). Miners acknowledged and
/// not yet confirmed then carry [`OpError::Interrupted`].
pub async fn set_power_unless(
    miners: &[SocketAddr],
    target_w: f64,
    opts: &FleetOptions,
    interrupt: &CancellationToken,
) -> Result<PowerReport, FleetError> {
    if !(target_w.is_finite() && target_w > 0.0) {
        return Err(FleetError::BadTarget(target_w));
    }
    opts.validate()?;
    let started = Instant::now();
    let clients: Vec<MinerClient> = miners
        .iter()
        .map(|&addr| MinerClient::new(addr, opts.timeout))
        .collect();
    // Built before the stream: see `Operation::command`.
    let commands: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, &client)| async move { (i, command(client, target_w, opts).await) })
        .collect();
    let mut commanded: Vec<(usize, PowerMinerReport)> = stream::iter(commands)
        .buffer_unordered(opts.parallelism)
        .collect()
        .await;
    commanded.sort_by_key(|(i, _)| *i);
    let mut reports: Vec<PowerMinerReport> = commanded.into_iter().map(|(_, r)| r).collect();
    let mut poll_errors: Vec<Option<MinerError>> = miners.iter().map(|_| None).collect();

    let mut next_poll = Instant::now() + opts.poll_every;
    while !interrupt.is_cancelled() && !pending(&reports, opts, Instant::now()).is_empty() {
        tokio::select! {
            _ = sleep_until(next_poll) => {}
            _ = interrupt.cancelled() => break,
        }
        // Again after the pause: a miner past its deadline meanwhile is not polled.
        let due = pending(&reports, opts, Instant::now());
        for (i, reading) in poll_all(&clients, &due, opts.parallelism).await {
            let r = &mut reports[i];
            match reading {
                Ok(t) => {
                    r.last_w = Some(t.watts);
                    if r.profile_w.is_some_and(|w| within(t.watts, w, opts)) {
                        r.confirmed_at = Some(t.at);
                    }
                }
                Err(e) => poll_errors[i] = Some(e),
            }
        }
        next_poll = Instant::now() + opts.poll_every;
    }

    let within = opts.confirm_within;
    for (r, poll_error) in reports.iter_mut().zip(poll_errors) {
        if awaited(r) && r.confirmed_at.is_none() && r.error.is_none() {
            let profile = r
                .profile_w
                .map_or(String::new(), |w| format!(", profile {w:.0} W"));
            let last = match (r.last_w, poll_error) {
                (Some(w), _) => format!("last reading {w:.0} W{profile}"),
                (None, Some(e)) => format!("no reading: {e}"),
                (None, None) => "no reading".to_owned(),
            };
            r.error = Some(OpError::unconfirmed(
                r.addr,
                within,
                last,
                interrupt.is_cancelled(),
            ));
        }
    }
    Ok(PowerReport {
        started,
        miners: reports,
    })
}

/// Whether a draw of `watts` confirms a profile of `profile_w`.
fn within(watts: f64, profile_w: f64, opts: &FleetOptions) -> bool {
    // At least a sleeping miner's draw: a low profile's 5 % would be under the noise of the
    // miner's own estimate.
    let tolerance = (TOLERANCE * profile_w).max(opts.asleep_max_w);
    (watts - profile_w).abs() <= tolerance
}

/// Acknowledged and awake: its draw is to be confirmed.
fn awaited(r: &PowerMinerReport) -> bool {
    r.acknowledged_at.is_some() && !r.asleep
}

/// Awaited, not confirmed, still within its deadline.
fn pending(reports: &[PowerMinerReport], opts: &FleetOptions, now: Instant) -> Vec<usize> {
    (0..reports.len())
        .filter(|&i| {
            let r = &reports[i];
            awaited(r)
                && r.confirmed_at.is_none()
                && r.acknowledged_at
                    .is_some_and(|ack| now < ack + opts.confirm_within)
        })
        .collect()
}

/// Chooses and sets one miner's profile; its report so far (the error in it, if any).
async fn command(client: MinerClient, target_w: f64, opts: &FleetOptions) -> PowerMinerReport {
    let mut report = PowerMinerReport {
        addr: client.addr,
        profile: None,
        profile_w: None,
        clamped: false,
        asleep: false,
        acknowledged_at: None,
        confirmed_at: None,
        last_w: None,
        error: None,
    };
    if let Err(e) = command_into(&client, target_w, opts, &mut report).await {
        tracing::warn!(miner = %client.addr, error = %e, "setting a power profile failed");
        report.error = Some(e.into());
    }
    report
}

async fn command_into(
    client: &MinerClient,
    target_w: f64,
    opts: &FleetOptions,
    report: &mut PowerMinerReport,
) -> Result<(), MinerError> {
    let profiles = client.profiles().await?;
    // `profiles` refuses an empty list; this only keeps the two in step.
    let (profile, clamped) = choose_profile(&profiles, target_w)
        .ok_or_else(|| client.api_error(ApiError::Malformed("PROFILES: no profile".into())))?;
    report.profile = Some(profile.name.clone());
    report.profile_w = Some(profile.watts);
    report.clamped = clamped;
    // Read before the command: `profileset` does not wake a sleeping miner, so one asleep now
    // will not show the profile's draw, however long we wait.
    let t = telemetry(client).await?;
    report.last_w = Some(t.watts);
    report.asleep = opts.is_asleep(&t);
    let mut acknowledged_at = None;
    let result = with_session(client, async |session| {
        client.profileset(session, &profile.name).await?;
        acknowledged_at = Some(Instant::now());
        Ok(())
    })
    .await;
    // Set even when only the logoff failed: the profile went through, so its draw is awaited.
    report.acknowledged_at = acknowledged_at;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(list: &[(&str, f64)]) -> Vec<Profile> {
        list.iter()
            .map(|&(name, watts)| Profile {
                name: name.into(),
                watts,
            })
            .collect()
    }

    /// A profile list, a target (W), and the chosen profile's name with `clamped`, or None.
    type Case<'a> = (&'a [(&'a str, f64)], f64, Option<(&'a str, bool)>);

    #[test]
    fn choose_profile_table() {
        let steps = [
            ("-2", 2000.0),
            ("-1", 2500.0),
            ("default", 3000.0),
            ("+1", 3300.0),
        ];
        let shuffled = [
            ("default", 3000.0),
            ("+1", 3300.0),
            ("-2", 2000.0),
            ("-1", 2500.0),
        ];
        let cases: &[Case] = &[
            (&steps, 2700.0, Some(("-1", false))),
            (&steps, 2500.0, Some(("-1", false))),
            (&steps, 2499.9, Some(("-2", false))),
            (&steps, 3000.0, Some(("default", false))),
            (&steps, 9000.0, Some(("+1", false))),
            (&steps, 1999.0, Some(("-2", true))),
            (&steps, 1.0, Some(("-2", true))),
            (&shuffled, 2700.0, Some(("-1", false))),
            (&shuffled, 100.0, Some(("-2", true))),
            (&[("a", 2000.0), ("b", 2000.0)], 2100.0, Some(("a", false))),
            (&[("a", 2000.0), ("b", 2000.0)], 100.0, Some(("a", true))),
            (&[("only", 3000.0)], 100.0, Some(("only", true))),
            (&[], 3000.0, None),
        ];
        for &(list, target, expected) in cases {
            let got = choose_profile(&profiles(list), target);
            let got = got.as_ref().map(|(p, clamped)| (p.name.as_str(), *clamped));
            assert_eq!(got, expected, "{list:?} at {target} W");
        }
    }

    #[test]
    fn tolerance_is_five_percent_or_a_sleeping_draw() {
        let opts = FleetOptions {
            asleep_max_w: 50.0,
            ..FleetOptions::default()
        };
        let cases = [
            (3000.0, 3000.0, true),
            (3149.0, 3000.0, true),
            (2851.0, 3000.0, true),
            (3151.0, 3000.0, false),
            (2849.0, 3000.0, false),
            // 5 % of 400 W is 20 W; the floor is 50 W.
            (449.0, 400.0, true),
            (451.0, 400.0, false),
        ];
        for (watts, profile_w, ok) in cases {
            assert_eq!(
                within(watts, profile_w, &opts),
                ok,
                "{watts} vs {profile_w}"
            );
        }
    }
}
