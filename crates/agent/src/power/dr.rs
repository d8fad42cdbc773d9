//! The DR executor: the one task that curtails the site's miners, following the desired
//! state's [`DrDirective`] (see the module doc of `power` for why there is only one).
//!
//! For a directive: wait for its start by the wall clock (at once if it already started and has
//! not ended, which is also how an agent restarted mid-event resumes it, its desired state being
//! on disk); `fleet::sleep` every miner; post the acknowledgements (retried while the control
//! plane is away, given up on a 404 or when the event is over); hold the miners asleep until the
//! end; wake them in staggered waves. A directive that disappears (cancelled) or is replaced
//! while shedding stops the hold at once: the miners are woken, or kept asleep for the new event
//! if it is already on. Shutdown leaves the miners as they are.
//!
//! The event being shed is marked in the state directory until its wake: an agent that was down
//! when that event ended or was cancelled wakes the miners when it comes back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wattmesh_miner::MinerClient;
use wattmesh_miner::fleet::{self, FleetError, FleetOptions, FleetReport, Telemetry};
use wattmesh_proto::agent::DesiredState;
use wattmesh_proto::energy::{DrAcks, DrDirective, MinerAck, PowerSample};
use wattmesh_proto::plan::{PlanDirective, PlanReport};

use super::gpu::{self, GpuControl, GpuOutcome, Nvml};
use super::plan::{self, Applied};
use super::sample::read_miners;
use super::{PowerConfig, instant_at, ms_until, now_ms};
use crate::client::{CallError, ControlClient};
use crate::state::{Shedding, StateDir};

/// How long the executor waits, or holds, before it looks at the wall clock again: a clock set
/// meanwhile moves a start or an end by at most this much.
const RECHECK: Duration = Duration::from_secs(60);
/// First pause before acknowledgements are posted again; doubles up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after applying a plan the executor waits for a sample to read the meter from.
const FRESH_SAMPLE_WITHIN: Duration = Duration::from_secs(10);
/// How long a plan's report is posted again after it was made, even past the plan's interval:
/// a wake's waves and ramps take minutes, so applying a plan made late in its interval ends
/// after it, and what was done is still the record the operator reads.
const REPORT_AFTER_INTERVAL_MS: i64 = 10 * 60 * 1000;

/// Where a directive is at a wall-clock instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No directive.
    Idle,
    /// It starts in this long.
    Before(Duration),
    /// Between its start and its end: the miners should be asleep.
    During,
    /// Over (or never valid: it ends before it starts).
    Over,
}

/// The phase of `dr` at `now_ms`; pure.
pub(crate) fn phase(dr: Option<&DrDirective>, now_ms: i64) -> Phase {
    match dr {
        None => Phase::Idle,
        Some(d) if d.ends_at_ms <= now_ms || d.ends_at_ms <= d.starts_at_ms => Phase::Over,
        Some(d) if now_ms < d.starts_at_ms => Phase::Before(ms_until(d.starts_at_ms, now_ms)),
        Some(_) => Phase::During,
    }
}

/// What the acknowledgements of a sleep say: each miner's instants on the wall clock, by the
/// wall time `wall_ms` read together with the runtime's `started` just before the sleep; pure.
pub(crate) fn acks(report: &FleetReport, started: Instant, wall_ms: i64) -> DrAcks {
    let ms = |at: Instant| {
        let after = at.saturating_duration_since(started).as_millis();
        wall_ms.saturating_add(i64::try_from(after).unwrap_or(i64::MAX))
    };
    DrAcks {
        miners: report
            .miners
            .iter()
            .map(|m| MinerAck {
                miner: m.addr.to_string(),
                acknowledged_ms: m.acknowledged_at.map(ms),
                confirmed_ms: m.confirmed_at.map(ms),
                error: m.error.as_ref().map(ToString::to_string),
            })
            .collect(),
    }
}

/// How a step of the executor ended.
enum Exit {
    /// Go on with whatever the desired state says now.
    Done,
    Shutdown,
}

/// Why shedding an event stopped.
enum Stop {
    /// Its end came.
    Ended,
    /// It was cancelled or replaced; holds the directive now in force.
    Gone(Option<DrDirective>),
    Shutdown,
}

/// The executor; owned by the one task running [`DrExecutor::run`].
pub(crate) struct DrExecutor {
    site: String,
    miners: Vec<SocketAddr>,
    opts: FleetOptions,
    client: ControlClient,
    /// The session's agent token, `None` while it has none the control plane accepts.
    token: watch::Receiver<Option<String>>,
    state: StateDir,
    /// The sampler's newest sample: the meter after a plan is applied.
    samples: watch::Receiver<Option<PowerSample>>,
    /// Each miner's power target (W) as last confirmed by its own draw; forgotten when a
    /// target was not confirmed, so it is set again. Never held across an await.
    targets: std::sync::Mutex<HashMap<SocketAddr, f64>>,
    /// This host's GPU group in the power model (`None`: the plan's only one).
    gpu_group: Option<String>,
    /// NVML, opened at the first plan with GPU groups (or why it could not be).
    gpus: std::sync::OnceLock<Result<Arc<dyn GpuControl>, String>>,
    shutdown: CancellationToken,
}

impl DrExecutor {
    pub fn new(
        site: &str,
        config: &PowerConfig,
        client: ControlClient,
        token: watch::Receiver<Option<String>>,
        state: StateDir,
        samples: watch::Receiver<Option<PowerSample>>,
        shutdown: CancellationToken,
    ) -> DrExecutor {
        DrExecutor {
            site: site.to_owned(),
            miners: config.miners.clone(),
            opts: config.fleet.clone(),
            client,
            token,
            state,
            samples,
            targets: std::sync::Mutex::default(),
            gpu_group: config.gpu_group.clone(),
            gpus: std::sync::OnceLock::new(),
            shutdown,
        }
    }

    /// Follows the directive of every desired state until shutdown.
    pub async fn run(self, mut desired: watch::Receiver<DesiredState>) {
        let site = &self.site;
        let mut watching = true;
        let mut seen: Option<DrDirective> = None;
        // The last event shed and woken from, with its end: never shed twice, even if the wall
        // clock says it is still on once its wake finished (an end moved later sheds again).
        let mut finished: Option<(String, i64)> = None;
        // The last power plan applied; a DR event's shedding forgets it, so the plan in force
        // is applied again once the event is over.
        let mut applied: Option<String> = None;
        if let Some(marked) = self.state.load_shedding() {
            let dr = desired.borrow().dr.clone();
            let resumes = phase(dr.as_ref(), now_ms()) == Phase::During;
            if resumes {
                tracing::info!(site = %site, event = %marked.event_id, "the agent restarted during a DR event's shedding");
            } else {
                tracing::info!(site = %site, event = %marked.event_id, "the agent was stopped during this DR event, which is no longer on; waking the miners");
                let plan = desired.borrow().plan.clone();
                if let Exit::Shutdown = self.wake(&marked.event_id, plan.as_ref()).await {
                    return;
                }
            }
        }
        loop {
            let dr = desired.borrow_and_update().dr.clone();
            if dr != seen {
                log_directive(site, dr.as_ref(), true);
                seen.clone_from(&dr);
            }
            let pending = pending_plan(&desired.borrow(), applied.as_deref());
            let wait = match (phase(dr.as_ref(), now_ms()), dr, pending) {
                (Phase::During, Some(d), _)
                    if finished != Some((d.event_id.clone(), d.ends_at_ms)) =>
                {
                    let key = (d.event_id.clone(), d.ends_at_ms);
                    match self.shed(d, &mut desired).await {
                        Exit::Done => finished = Some(key),
                        Exit::Shutdown => return,
                    }
                    applied = None;
                    continue;
                }
                (_, _, Some(p)) => {
                    match self.apply_plan(&p, &desired, finished.as_ref()).await {
                        Exit::Done => applied = Some(p.plan_id),
                        Exit::Shutdown => return,
                    }
                    continue;
                }
                (Phase::Before(wait), _, None) => Some(wait.min(RECHECK)),
                _ => None,
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = desired.changed(), if watching => if changed.is_err() {
                    // The session is gone: only shutdown does that; keep the last directive.
                    watching = false;
                },
                _ = sleep_for(wait) => {}
            }
        }
    }

    /// Sheds event `d` from now to its end or until it goes away; then wakes the miners,
    /// unless the directive that replaced it is already on.
    async fn shed(&self, d: DrDirective, desired: &mut watch::Receiver<DesiredState>) -> Exit {
        let (site, id) = (&self.site, d.event_id.clone());
        tracing::info!(
            site = %site, event = %id, miners = self.miners.len(), target_kw = d.target_kw,
            "DR event on: putting the miners to sleep"
        );
        if d.shed_inference {
            // The gateways route the site's traffic away; the agent has nothing to stop yet.
            tracing::info!(site = %site, event = %id, "the event sheds inference too: the gateways route its traffic to other sites");
        }
        let marker = Shedding {
            event_id: id.clone(),
        };
        if let Err(e) = self.state.save_shedding(&marker) {
            tracing::warn!(site = %site, event = %id, "cannot mark the event as being shed: {e}");
        }
        let stop = match self.sleep_and_hold(d, desired).await {
            Ok(stop) => stop,
            Err(e) => {
                // The options were checked when the agent started: this is a bug, not weather.
                tracing::error!(site = %site, event = %id, "cannot curtail the miners: {e}");
                return self.sit_out(&id, desired).await;
            }
        };
        match stop {
            Stop::Shutdown => Exit::Shutdown,
            Stop::Gone(Some(next)) if phase(Some(&next), now_ms()) == Phase::During => {
                // The replacement is on: the miners stay asleep and it is shed next.
                tracing::info!(site = %site, event = %id, next = %next.event_id, "DR event replaced by one already on; keeping the miners asleep");
                Exit::Done
            }
            Stop::Gone(_) => {
                tracing::info!(site = %site, event = %id, "DR event cancelled or replaced; waking the miners now");
                let plan = desired.borrow().plan.clone();
                self.wake(&id, plan.as_ref()).await
            }
            Stop::Ended => {
                tracing::info!(site = %site, event = %id, "DR event over; waking the miners");
                let plan = desired.borrow().plan.clone();
                self.wake(&id, plan.as_ref()).await
            }
        }
    }

    /// Puts the miners to sleep, posts the acknowledgements, and holds them asleep until the
    /// end of `d` or until it goes away.
    async fn sleep_and_hold(
        &self,
        mut d: DrDirective,
        desired: &mut watch::Receiver<DesiredState>,
    ) -> Result<Stop, FleetError> {
        let (site, id) = (&self.site, d.event_id.clone());
        let (started, wall_ms) = (Instant::now(), now_ms());
        // Not raced against a change of the directive: a sleep dropped half-way could leave
        // LuxOS sessions held. A change made meanwhile is seen just after.
        let report = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(Stop::Shutdown),
            r = fleet::sleep(&self.miners, &self.opts) => r?,
        };
        let acks = acks(&report, started, wall_ms);
        let confirmed = report
            .miners
            .iter()
            .filter(|m| m.confirmed_at.is_some())
            .count();
        tracing::info!(
            site = %site, event = %id, confirmed, miners = report.miners.len(),
            after = ?report.all_acknowledged_after(),
            "miners put to sleep"
        );
        if let Some(m) = report.failed().next() {
            let failed = report.failed().count();
            let error = m
                .error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::warn!(site = %site, event = %id, failed, "miners not confirmed asleep (held asleep from now on), e.g. {error}");
        }
        let post = self.post_acks(&id, &acks);
        tokio::pin!(post);
        let mut posted = false;
        let mut watching = true;
        let stop = 'shed: loop {
            // The directive as it is now: the same event (its end possibly moved), or gone.
            match desired.borrow_and_update().dr.clone() {
                Some(now) if now.event_id == id => d = now,
                other => break 'shed Stop::Gone(other),
            }
            if phase(Some(&d), now_ms()) != Phase::During {
                break 'shed Stop::Ended;
            }
            let halt = CancellationToken::new();
            let until = instant_at(d.ends_at_ms, RECHECK);
            let hold = fleet::hold_asleep(&self.miners, &self.opts, until, &halt);
            tokio::pin!(hold);
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break 'shed Stop::Shutdown,
                    held = &mut hold => {
                        let reslept = held?.reslept();
                        if !reslept.is_empty() {
                            tracing::info!(site = %site, event = %id, miners = ?reslept, "miners woke up during the event; put back to sleep");
                        }
                        continue 'shed;
                    }
                    () = &mut post, if !posted => posted = true,
                    changed = desired.changed(), if watching => {
                        if changed.is_err() {
                            watching = false;
                            continue;
                        }
                        if desired.borrow().dr.as_ref() == Some(&d) {
                            continue;
                        }
                        // Stop the hold between two rounds, so no re-sleep is cut half-way.
                        halt.cancel();
                        tokio::select! {
                            _ = self.shutdown.cancelled() => break 'shed Stop::Shutdown,
                            held = &mut hold => { held?; }
                        }
                        continue 'shed;
                    }
                }
            }
        };
        if !posted && !matches!(stop, Stop::Shutdown) {
            tracing::warn!(site = %site, event = %id, "the acknowledgements were not delivered before the event was over; giving up on them");
        }
        Ok(stop)
    }

    /// Posts `acks` of event `id` until the control plane takes them or says it does not know
    /// the event. Waits for a token while the session has none (it registers again by itself
    /// when the control plane refuses its token).
    async fn post_acks(&self, id: &str, acks: &DrAcks) {
        let site = &self.site;
        let mut token = self.token.clone();
        let mut backoff = FIRST_BACKOFF;
        let mut reachable = true;
        loop {
            let current = match token.wait_for(Option::is_some).await {
                Ok(t) => t.clone(),
                // The session is gone: only shutdown does that.
                Err(_) => return,
            };
            let Some(current) = current else {
                continue;
            };
            match self.client.dr_acks(&current, id, acks).await {
                Ok(()) => {
                    tracing::info!(site = %site, event = %id, miners = acks.miners.len(), "acknowledgements delivered");
                    return;
                }
                Err(CallError::NotFound(message)) => {
                    tracing::warn!(site = %site, event = %id, "the control plane does not know the event; not sending its acknowledgements again: {message}");
                    return;
                }
                Err(CallError::Unauthorized(_)) => {
                    // The session's next call sees the same refusal and registers again.
                    if token
                        .wait_for(|t| t.as_ref() != Some(&current))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Err(CallError::Failed(e)) => {
                    if reachable {
                        tracing::warn!(site = %site, event = %id, "cannot post the acknowledgements yet (retrying): {e}");
                        reachable = false;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Wakes the miners in waves — those the power plan in force has hashing, or every one
    /// without a plan (or with one whose interval is over: made for other conditions) — then
    /// forgets the shedding marker.
    async fn wake(&self, id: &str, plan: Option<&PlanDirective>) -> Exit {
        let site = &self.site;
        let plan = plan.filter(|p| now_ms() < p.ends_at_ms);
        let miners = match plan.map(|p| plan::assign(&self.miners, p)) {
            Some(Ok(assignment)) => assignment.hashing(),
            _ => self.miners.clone(),
        };
        // Not raced against the desired state, for the same reason as the sleep; a new event
        // that started meanwhile is shed once the wake is done.
        let report = tokio::select! {
            _ = self.shutdown.cancelled() => return Exit::Shutdown,
            r = fleet::wake(&miners, &self.opts) => r,
        };
        match report {
            Ok(report) => {
                let confirmed = report
                    .miners
                    .iter()
                    .filter(|m| m.confirmed_at.is_some())
                    .count();
                tracing::info!(site = %site, event = %id, confirmed, miners = report.miners.len(), "miners woken");
                if let Some(m) = report.failed().next() {
                    let failed = report.failed().count();
                    let error = m
                        .error
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    tracing::warn!(site = %site, event = %id, failed, "miners not confirmed awake, e.g. {error}");
                }
            }
            Err(e) => tracing::error!(site = %site, event = %id, "cannot wake the miners: {e}"),
        }
        if let Err(e) = self.state.forget_shedding() {
            tracing::warn!(site = %site, event = %id, "cannot remove the shedding marker: {e}");
        }
        Exit::Done
    }

    /// Applies power plan `p`: the miners it has asleep go to sleep, those it has hashing are
    /// woken (in waves) and set to its power target; then reports what the miners' telemetry
    /// and the meter confirmed. A DR event that comes on meanwhile (in `desired`, other than
    /// the one `finished`) interrupts it: the commands in flight finish, no wave starts after
    /// them, nothing more is waited for, and the report says so — a wake's waves and ramps
    /// last minutes, and the event's miners must answer within seconds.
    async fn apply_plan(
        &self,
        p: &PlanDirective,
        desired: &watch::Receiver<DesiredState>,
        finished: Option<&(String, i64)>,
    ) -> Exit {
        let site = &self.site;
        let mut applied = Applied::default();
        match plan::assign(&self.miners, p) {
            Err(why) => {
                tracing::warn!(site = %site, plan = %p.plan_id, "cannot apply the power plan: {why}");
                applied.refused = Some(why);
            }
            Ok(assignment) => {
                let interrupt = CancellationToken::new();
                let done = {
                    let work = self.command_plan(&assignment, &mut applied, &interrupt);
                    tokio::pin!(work);
                    let mut event = std::pin::pin!(dr_comes_on(desired.clone(), finished.cloned()));
                    loop {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return Exit::Shutdown,
                            done = &mut work => break done,
                            id = &mut event, if !interrupt.is_cancelled() => {
                                tracing::info!(site = %site, plan = %p.plan_id, event = %id, "a DR event came on: the power plan stops at the commands in flight");
                                interrupt.cancel();
                            }
                        }
                    }
                };
                if interrupt.is_cancelled() {
                    applied.interrupted = Some("interrupted by a demand-response event: the rest of the plan waits for its end".into());
                }
                if let Err(e) = done {
                    tracing::error!(site = %site, plan = %p.plan_id, "cannot apply the power plan: {e}");
                    applied.refused = Some(e.to_string());
                }
            }
        }
        if p.gpu_groups.iter().any(|g| g.nodes > 0) {
            let control = self.gpus.get_or_init(Nvml::open).clone();
            let (plan, group) = (p.clone(), self.gpu_group.clone());
            // NVML calls are blocking ioctls into the driver.
            applied.gpu =
                tokio::task::spawn_blocking(move || gpu::apply(&control, &plan, group.as_deref()))
                    .await
                    .unwrap_or_else(|e| GpuOutcome {
                        caps: Vec::new(),
                        problems: vec![format!("GPU power caps not applied: {e}")],
                    });
        }
        // An interrupted plan hands the miners to the DR event at once: the newest sample's
        // meter, not one more sampling round's.
        let meter_kw = if applied.interrupted.is_some() {
            self.samples.borrow().as_ref().and_then(|s| s.meter_kw)
        } else {
            self.fresh_meter_kw().await
        };
        let report = plan::report(p, &applied, meter_kw, now_ms());
        tracing::info!(
            site = %site, plan = %p.plan_id, outcome = ?report.outcome,
            hashing = report.miners_hashing, asleep = report.miners_asleep,
            unconfirmed = report.miners_unconfirmed, meter_kw = ?report.meter_kw,
            "power plan applied"
        );
        // Posted beside the executor: a control plane away must not hold the miners' owner.
        tokio::spawn(post_report(
            self.client.clone(),
            self.token.clone(),
            p.clone(),
            report,
            self.shutdown.clone(),
        ));
        Exit::Done
    }

    /// Commands what `assignment` changes: miners already asleep, or hashing at the target
    /// last confirmed for them, are left alone. Miners to wake get their target first, so
    /// they ramp straight to it (a ramp from asleep takes minutes; their wake is what is
    /// confirmed then).
    async fn command_plan(
        &self,
        assignment: &plan::Assignment,
        applied: &mut Applied,
        interrupt: &CancellationToken,
    ) -> Result<(), FleetError> {
        let clients: Vec<MinerClient> = self
            .miners
            .iter()
            .map(|&addr| MinerClient::new(addr, self.opts.timeout))
            .collect();
        // A miner that does not answer is left out, so it is commanded.
        let now: HashMap<SocketAddr, Telemetry> = read_miners(&clients, self.opts.parallelism)
            .await
            .into_iter()
            .filter_map(|(addr, t)| Some((addr, t?)))
            .collect();
        let asleep = |m: &SocketAddr| now.get(m).is_some_and(|t| self.opts.is_asleep(t));
        let hashing = |m: &SocketAddr| now.get(m).is_some_and(|t| self.opts.is_hashing(t));
        let to_sleep: Vec<SocketAddr> = assignment
            .sleep
            .iter()
            .copied()
            .filter(|m| !asleep(m))
            .collect();
        applied.already_asleep = assignment.sleep.len() - to_sleep.len();
        let to_wake: Vec<SocketAddr> = assignment
            .hashing()
            .into_iter()
            .filter(|m| !hashing(m))
            .collect();
        tracing::info!(
            site = %self.site, to_sleep = to_sleep.len(), to_wake = to_wake.len(),
            hashing = assignment.hashing().len(), asleep = assignment.sleep.len(),
            "applying the power plan"
        );
        if !to_sleep.is_empty() {
            applied.slept = Some(fleet::sleep(&to_sleep, &self.opts).await?);
        }
        for (watts, miners) in &assignment.hash {
            let mut retarget = Vec::new();
            for m in miners {
                let at_target = self
                    .targets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(m)
                    == Some(watts);
                match (hashing(m), at_target) {
                    (true, true) => applied.kept_miners.push(*m),
                    (true, false) => {
                        applied.already_awake.push(*m);
                        retarget.push(*m);
                    }
                    (false, _) => retarget.push(*m),
                }
            }
            if !retarget.is_empty() {
                if interrupt.is_cancelled() {
                    break;
                }
                applied
                    .powered
                    .push(fleet::set_power_unless(&retarget, *watts, &self.opts, interrupt).await?);
            }
        }
        if !to_wake.is_empty() && !interrupt.is_cancelled() {
            applied.woke = Some(fleet::wake_unless(&to_wake, &self.opts, interrupt).await?);
        }
        // Remember what is now in force, so the next plan leaves it alone.
        let in_force = applied.hashing_at_target();
        let mut targets = self
            .targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (watts, miners) in &assignment.hash {
            for m in miners {
                if in_force.contains(m) {
                    targets.insert(*m, *watts);
                } else {
                    targets.remove(m);
                }
            }
        }
        Ok(())
    }

    /// The meter's load in the first sample taken from now, if one comes within two sampling
    /// rounds' worth of time and the meter answered.
    async fn fresh_meter_kw(&self) -> Option<f64> {
        let mut samples = self.samples.clone();
        let from = now_ms();
        let fresh = samples.wait_for(|s| s.as_ref().is_some_and(|s| s.at_ms >= from));
        match tokio::time::timeout(FRESH_SAMPLE_WITHIN, fresh).await {
            Ok(Ok(s)) => s.as_ref().and_then(|s| s.meter_kw),
            _ => None,
        }
    }

    /// Waits, doing nothing, until event `id` is over or goes away.
    async fn sit_out(&self, id: &str, desired: &mut watch::Receiver<DesiredState>) -> Exit {
        loop {
            let dr = desired.borrow_and_update().dr.clone();
            let on = dr.as_ref().filter(|d| d.event_id == id);
            if phase(on, now_ms()) != Phase::During {
                return Exit::Done;
            }
            let end = on.map(|d| ms_until(d.ends_at_ms, now_ms()).min(RECHECK));
            tokio::select! {
                _ = self.shutdown.cancelled() => return Exit::Shutdown,
                changed = desired.changed() => if changed.is_err() {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Exit::Shutdown,
                        _ = sleep_for(end) => {}
                    }
                },
                _ = sleep_for(end) => {}
            }
        }
    }
}

/// The plan in force that has not been applied yet, if any.
fn pending_plan(desired: &DesiredState, applied: Option<&str>) -> Option<PlanDirective> {
    desired
        .plan
        .clone()
        .filter(|p| Some(p.plan_id.as_str()) != applied && now_ms() < p.ends_at_ms)
}

/// Posts `report` of plan `p` until the control plane takes it, says it does not know the
/// plan, or both the plan's interval and `REPORT_AFTER_INTERVAL_MS` from the report are over.
async fn post_report(
    client: ControlClient,
    mut token: watch::Receiver<Option<String>>,
    p: PlanDirective,
    report: PlanReport,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let until_ms = p
        .ends_at_ms
        .max(report.at_ms.saturating_add(REPORT_AFTER_INTERVAL_MS));
    while now_ms() < until_ms {
        let current = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = token.wait_for(Option::is_some) => match t {
                Ok(t) => t.clone(),
                Err(_) => return,
            },
        };
        let Some(current) = current else { continue };
        match client.plan_report(&current, &p.plan_id, &report).await {
            Ok(()) => return,
            Err(CallError::NotFound(message)) => {
                tracing::warn!(plan = %p.plan_id, "the control plane does not know the plan; not reporting it again: {message}");
                return;
            }
            Err(e) => {
                tracing::debug!(plan = %p.plan_id, "cannot report the plan yet (retrying): {e}")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// For a site that drives no miners: logs every new directive, and nothing else.
pub(crate) async fn log_only(
    site: String,
    mut desired: watch::Receiver<DesiredState>,
    shutdown: CancellationToken,
) {
    let mut seen: Option<DrDirective> = None;
    loop {
        let dr = desired.borrow_and_update().dr.clone();
        if dr != seen {
            log_directive(&site, dr.as_ref(), false);
            seen = dr;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = desired.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

fn log_directive(site: &str, dr: Option<&DrDirective>, drives_miners: bool) {
    match dr {
        None => tracing::debug!(site = %site, "no DR event"),
        Some(d) if drives_miners => tracing::info!(
            site = %site, event = %d.event_id, starts_at_ms = d.starts_at_ms,
            ends_at_ms = d.ends_at_ms, target_kw = d.target_kw, shed_inference = d.shed_inference,
            "DR directive"
        ),
        Some(d) => tracing::info!(
            site = %site, event = %d.event_id, starts_at_ms = d.starts_at_ms,
            ends_at_ms = d.ends_at_ms,
            "DR directive ignored: this agent drives no miners"
        ),
    }
}

/// Resolves with the event's id once a DR directive in `desired` is on (other than the one
/// already shed, `finished`): waits for its start, or for the desired state to change.
async fn dr_comes_on(
    mut desired: watch::Receiver<DesiredState>,
    finished: Option<(String, i64)>,
) -> String {
    loop {
        let dr = desired.borrow_and_update().dr.clone();
        let wait = match (phase(dr.as_ref(), now_ms()), dr) {
            (Phase::During, Some(d)) if finished != Some((d.event_id.clone(), d.ends_at_ms)) => {
                return d.event_id;
            }
            (Phase::Before(wait), _) => Some(wait.min(RECHECK)),
            _ => None,
        };
        tokio::select! {
            changed = desired.changed() => if changed.is_err() {
                // The session is gone: no event can come any more.
                std::future::pending::<()>().await;
            },
            _ = sleep_for(wait) => {}
        }
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_miner::fleet::MinerReport;

    fn directive(starts_at_ms: i64, ends_at_ms: i64) -> DrDirective {
        DrDirective {
            event_id: "dr-1".into(),
            target_kw: 100.0,
            starts_at_ms,
            ends_at_ms,
            shed_inference: false,
        }
    }

    #[test]
    fn phases_of_a_directive() {
        let d = directive(1_000, 2_000);
        let cases = [
            (None, 1_500, Phase::Idle),
            (Some(&d), 0, Phase::Before(Duration::from_secs(1))),
            (Some(&d), 999, Phase::Before(Duration::from_millis(1))),
            (Some(&d), 1_000, Phase::During),
            (Some(&d), 1_999, Phase::During),
            (Some(&d), 2_000, Phase::Over),
            (Some(&d), 9_000, Phase::Over),
        ];
        for (dr, now, want) in cases {
            assert_eq!(phase(dr, now), want, "{dr:?} at {now}");
        }
        // One that ends before it starts is never on.
        assert_eq!(phase(Some(&directive(2_000, 1_000)), 500), Phase::Over);
        assert_eq!(phase(Some(&directive(1_000, 1_000)), 500), Phase::Over);
    }

    #[test]
    fn acks_carry_wall_clock_instants() {
        let started = Instant::now();
        let addr = |port| SocketAddr::from(([10, 0, 0, 1], port));
        let report = FleetReport {
            started,
            miners: vec![
                MinerReport {
                    addr: addr(4028),
                    acknowledged_at: Some(started + Duration::from_millis(120)),
                    confirmed_at: Some(started + Duration::from_millis(8_500)),
                    last: None,
                    error: None,
                },
                MinerReport {
                    addr: addr(4029),
                    acknowledged_at: None,
                    confirmed_at: None,
                    last: None,
                    error: Some(
                        wattmesh_miner::MinerError::Timeout {
                            addr: addr(4029),
                            after: Duration::from_secs(5),
                        }
                        .into(),
                    ),
                },
            ],
        };
        let got = acks(&report, started, 1_700_000_000_000);
        assert_eq!(
            got.miners[0],
            MinerAck {
                miner: "10.0.0.1:4028".into(),
                acknowledged_ms: Some(1_700_000_000_120),
                confirmed_ms: Some(1_700_000_008_500),
                error: None,
            }
        );
        assert_eq!(got.miners[1].miner, "10.0.0.1:4029");
        assert_eq!(got.miners[1].acknowledged_ms, None);
        let error = got.miners[1].error.clone().unwrap_or_default();
        assert!(error.contains("10.0.0.1:4029"), "{error}");
    }
}
