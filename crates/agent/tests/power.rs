//! The agent's power side against a fake control plane (the agent endpoints over real HTTP,
//! acknowledgements included) and a simulated site: 20 simulated S21 miners, sped up so a ramp
//! takes well under a second, and a simulated meter that the test keeps on the miners' draw.
//! What the heartbeats say of the meter and the miners, and how DR events are executed on the
//! miners: slept, acknowledged, held, woken at the end, on cancellation, not before the start,
//! and after an agent that was down through the end comes back; and how the live power plan is
//! applied (miners slept, woken, set to its power target), confirmed and reported.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wattmesh_agent::{AgentConfig, AgentError, Catalog, FleetOptions, PowerConfig, run};
use wattmesh_miner::Curtail;
use wattmesh_miner::meter::{Fault, SimMeter, SiteLoad};
use wattmesh_miner::sim::{Phase, SimFleet, SimOptions, UnitSpec};
use wattmesh_proto::agent::{
    DesiredState, Heartbeat, HeartbeatAck, RegisterRequest, RegisterResponse, WatchQuery,
};
use wattmesh_proto::energy::{DrAcks, DrDirective, PowerSample};
use wattmesh_proto::plan::{AsicTarget, PlanDirective, PlanOutcome, PlanReport};

const BOOTSTRAP: &str = "bootstrap-secret";
/// Every wait in these tests gives up after this long; none is expected to come near it.
const DEADLINE: Duration = Duration::from_secs(30);
const MINERS: usize = 20;
/// Simulated seconds per second: an S21 ramps down in 0.04 s and up in 0.6 s.
const SPEED: f64 = 200.0;

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

// === fake control plane ===

#[derive(Default)]
struct Recorded {
    tokens: HashSet<String>,
    registrations: usize,
    /// The desired-state version of the last heartbeat.
    converged: u64,
    /// The power sample of every heartbeat that carried one.
    samples: Vec<PowerSample>,
    /// Every acknowledgement post: the event id of its path and its body.
    acks: Vec<(String, DrAcks)>,
    /// Every plan report: the plan id of its path and its body.
    reports: Vec<(String, PlanReport)>,
    /// Plan reports answered 503 (while `refuse_reports` is set).
    reports_refused: usize,
    /// Answer plan reports 503, as a control plane restarting does.
    refuse_reports: bool,
    /// Answer heartbeats 503.
    refuse_heartbeats: bool,
}

#[derive(Clone)]
struct FakeControl {
    recorded: Arc<Mutex<Recorded>>,
    desired: Arc<watch::Sender<DesiredState>>,
    down: CancellationToken,
}

struct RunningControl {
    fake: FakeControl,
    url: String,
    server: JoinHandle<()>,
}

impl RunningControl {
    async fn start(desired: DesiredState) -> RunningControl {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeControl {
            recorded: Arc::default(),
            desired: Arc::new(watch::channel(desired).0),
            down: CancellationToken::new(),
        };
        let app = Router::new()
            .route("/api/v1/agent/register", post(register))
            .route("/api/v1/agent/heartbeat", post(heartbeat))
            .route("/api/v1/agent/desired", get(desired_state))
            .route("/api/v1/agent/dr-events/{id}/acks", post(dr_acks))
            .route("/api/v1/agent/plans/{id}/report", post(plan_report))
            .with_state(fake.clone());
        let down = fake.down.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(down.cancelled_owned())
                .await
                .unwrap();
        });
        RunningControl { fake, url, server }
    }

    /// Sets the site's DR directive (a new desired-state version).
    fn set_dr(&self, dr: Option<DrDirective>) {
        self.fake.desired.send_modify(|d| {
            d.version += 1;
            d.dr = dr;
        });
    }

    /// Sets the site's power plan (a new desired-state version).
    fn set_plan(&self, plan: Option<PlanDirective>) {
        self.fake.desired.send_modify(|d| {
            d.version += 1;
            d.plan = plan;
        });
    }

    /// The report of plan `id`, once it came.
    fn report(&self, id: &str) -> Option<PlanReport> {
        self.recorded(|r| {
            r.reports
                .iter()
                .rev()
                .find(|(p, _)| p == id)
                .map(|(_, r)| r.clone())
        })
    }

    fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.fake.recorded.lock().unwrap())
    }

    /// The first sample, from the newest back, that `pick` takes.
    fn sample<T>(&self, pick: impl Fn(&PowerSample) -> Option<T>) -> Option<T> {
        self.recorded(|r| r.samples.iter().rev().find_map(&pick))
    }

    async fn shut_down(self) {
        self.fake.down.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("the fake control plane did not stop")
            .unwrap();
    }
}

fn unauthorized() -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": "bad token"}});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

fn agent_ok(fake: &FakeControl, headers: &HeaderMap) -> bool {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    fake.recorded.lock().unwrap().tokens.contains(token)
}

async fn register(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Json(_): Json<RegisterRequest>,
) -> Response {
    let bootstrap = format!("Bearer {BOOTSTRAP}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bootstrap.as_str()) {
        return unauthorized();
    }
    let mut r = fake.recorded.lock().unwrap();
    let agent_token = format!("agent-token-{}", r.registrations);
    r.registrations += 1;
    r.tokens.insert(agent_token.clone());
    Json(RegisterResponse { agent_token }).into_response()
}

async fn heartbeat(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Response {
    if !agent_ok(&fake, &headers) {
        return unauthorized();
    }
    let mut r = fake.recorded.lock().unwrap();
    if r.refuse_heartbeats {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    r.converged = hb.desired_version;
    r.samples.extend(hb.earlier_power);
    if let Some(sample) = hb.power {
        r.samples.push(sample);
    }
    drop(r);
    let desired_version = fake.desired.borrow().version;
    Json(HeartbeatAck { desired_version }).into_response()
}

async fn desired_state(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Response {
    if !agent_ok(&fake, &headers) {
        return unauthorized();
    }
    let mut rx = fake.desired.subscribe();
    let wait = Duration::from_secs(q.wait_s.unwrap_or(0).min(30));
    tokio::select! {
        _ = fake.down.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ = tokio::time::timeout(wait, rx.wait_for(|d| Some(d.version) != q.after)) => {}
    }
    let state = fake.desired.borrow().clone();
    Json(state).into_response()
}

async fn dr_acks(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(acks): Json<DrAcks>,
) -> Response {
    if !agent_ok(&fake, &headers) {
        return unauthorized();
    }
    fake.recorded.lock().unwrap().acks.push((id, acks));
    StatusCode::NO_CONTENT.into_response()
}

async fn plan_report(
    State(fake): State<FakeControl>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(report): Json<PlanReport>,
) -> Response {
    if !agent_ok(&fake, &headers) {
        return unauthorized();
    }
    let mut r = fake.recorded.lock().unwrap();
    if r.refuse_reports {
        r.reports_refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    r.reports.push((id, report));
    StatusCode::NO_CONTENT.into_response()
}

// === simulated site ===

/// 20 S21s and a meter that reads their draw, kept on it by a small loop.
struct SimSite {
    fleet: Arc<SimFleet>,
    meter: SimMeter,
    load: SiteLoad,
    follow: JoinHandle<()>,
}

impl SimSite {
    async fn start() -> SimSite {
        let model = *wattmesh_domain::mining::asic_model("Antminer S21").unwrap();
        let options = SimOptions {
            speed: SPEED,
            ..SimOptions::default()
        };
        let fleet = SimFleet::start_with(vec![UnitSpec::new(model); MINERS], options)
            .await
            .unwrap();
        let fleet = Arc::new(fleet);
        let load = SiteLoad::new(fleet.total_watts() / 1e3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let meter = SimMeter::start(listener, load.clone()).unwrap();
        let follow = tokio::spawn({
            let (fleet, load) = (fleet.clone(), load.clone());
            async move {
                loop {
                    load.set_kw(fleet.total_watts() / 1e3);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        SimSite {
            fleet,
            meter,
            load,
            follow,
        }
    }

    fn power(&self) -> PowerConfig {
        PowerConfig {
            miners: self.fleet.addrs().to_vec(),
            meter: Some(self.meter.local_addr()),
            sample_every: Duration::from_millis(100),
            fleet: FleetOptions {
                parallelism: 8,
                timeout: Duration::from_millis(500),
                confirm_within: Duration::from_secs(10),
                poll_every: Duration::from_millis(50),
                wave_size: 8,
                wave_gap: Duration::from_millis(100),
                ..FleetOptions::default()
            },
            gpu_group: None,
        }
    }

    fn all(&self, phase: Phase) -> bool {
        let units = self.fleet.units();
        units.len() == MINERS && units.iter().all(|u| u.phase == phase)
    }

    fn addrs(&self) -> BTreeSet<String> {
        self.fleet
            .addrs()
            .iter()
            .map(SocketAddr::to_string)
            .collect()
    }
}

impl Drop for SimSite {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

// === agent ===

struct Agent {
    _tmp: tempfile::TempDir,
    models_dir: PathBuf,
    state_dir: PathBuf,
}

impl Agent {
    fn new() -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        Agent {
            models_dir: tmp.path().join("models"),
            state_dir: tmp.path().join("state"),
            _tmp: tmp,
        }
    }

    fn config(&self, control_url: &str, power: Option<PowerConfig>) -> AgentConfig {
        AgentConfig {
            control_url: control_url.to_owned(),
            bootstrap_token: BOOTSTRAP.to_owned(),
            site: "site-1".into(),
            region: "na".into(),
            power_price_usd_per_mwh: None,
            node_name: "site-1-cpu-0".into(),
            node_memory_bytes: 8 << 30,
            models_dir: self.models_dir.clone(),
            state_dir: self.state_dir.clone(),
            heartbeat_interval: Duration::from_millis(50),
            catalog: Catalog::builtin(),
            power,
        }
    }
}

struct RunningAgent {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    fn start(config: AgentConfig) -> RunningAgent {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, shutdown.clone()));
        RunningAgent { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the agent did not stop")
            .unwrap()
            .unwrap();
    }
}

// === helpers ===

fn desired(dr: Option<DrDirective>) -> DesiredState {
    DesiredState {
        version: 1,
        replicas: Vec::new(),
        dr,
        plan: None,
    }
}

/// A plan for the 20 miners: the first `hashing` at `watts` each, the rest asleep; in force
/// for the next quarter hour.
fn plan(id: &str, units: u32, hashing: u32, watts: f64) -> PlanDirective {
    let now = now_ms();
    PlanDirective {
        plan_id: id.into(),
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 900_000,
        asic_groups: vec![AsicTarget {
            name: "Antminer S21".into(),
            units,
            units_hashing: hashing,
            watts_per_unit: watts,
        }],
        gpu_groups: vec![],
        expected_meter_kw: 40.0,
    }
}

fn directive(id: &str, starts_at_ms: i64, ends_at_ms: i64) -> DrDirective {
    DrDirective {
        event_id: id.into(),
        target_kw: 5.0,
        starts_at_ms,
        ends_at_ms,
        shed_inference: false,
    }
}

/// Polls `check` until it gives a value, or panics after [`DEADLINE`] naming `what`.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a site, a control plane with `dr`, and an agent driving the site; returns once a
/// heartbeat showed every miner hashing.
async fn start_all(dr: Option<DrDirective>) -> (SimSite, RunningControl, Agent, RunningAgent) {
    let site = SimSite::start().await;
    let control = RunningControl::start(desired(dr)).await;
    let agent = Agent::new();
    let running = RunningAgent::start(agent.config(&control.url, Some(site.power())));
    eventually("a heartbeat with every miner hashing", || {
        control.sample(|s| (s.miners.hashing as usize == MINERS).then_some(()))
    })
    .await;
    (site, control, agent, running)
}

// === tests ===

#[tokio::test]
async fn heartbeats_carry_the_meter_and_the_miners() {
    let (site, control, _agent, running) = start_all(None).await;
    let model = wattmesh_domain::mining::asic_model("Antminer S21").unwrap();
    let fleet_kw = MINERS as f64 * model.nominal_w / 1e3;
    let set_kw = site.load.kw();
    assert!(
        (set_kw - fleet_kw).abs() < 1e-6,
        "the site draws {set_kw} kW"
    );

    let sample = eventually("a sample with the meter and every miner", || {
        control.sample(|s| {
            (s.meter_kw.is_some() && s.miners.hashing as usize == MINERS).then(|| s.clone())
        })
    })
    .await;
    let meter_kw = sample.meter_kw.unwrap();
    assert!(
        (meter_kw - set_kw).abs() < 1e-3,
        "meter {meter_kw} kW, set {set_kw} kW"
    );
    assert!(sample.meter_kwh.is_some(), "{sample:?}");
    assert_eq!(sample.meter_error, None);
    assert_eq!(sample.miners.total as usize, MINERS);
    assert_eq!(sample.miners.asleep, 0);
    assert_eq!(sample.miners.unreachable, 0);
    assert!(
        (sample.miners.kw - fleet_kw).abs() < 1e-3,
        "the miners say {} kW",
        sample.miners.kw
    );
    let fleet_ths = MINERS as f64 * model.nominal_ths;
    assert!(
        (sample.miners.ths - fleet_ths).abs() < 1.0,
        "the miners say {} TH/s",
        sample.miners.ths
    );
    let stamped = sample.at_ms;
    assert!(stamped > 0 && stamped <= now_ms(), "at_ms {stamped}");

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_meter_that_stops_answering_is_reported_and_sampling_goes_on() {
    let (site, control, _agent, running) = start_all(None).await;
    eventually("a sample with a meter reading", || {
        control.sample(|s| s.meter_kw.map(drop))
    })
    .await;

    site.meter.set_fault(Fault::Silent);
    let failed = eventually("a sample with the meter's error", || {
        control.sample(|s| s.meter_error.is_some().then(|| s.clone()))
    })
    .await;
    assert_eq!(failed.meter_kw, None, "{failed:?}");
    assert_eq!(failed.meter_kwh, None, "{failed:?}");
    // The miners are still read, and the meter's failure is theirs to see, not a panic.
    assert_eq!(failed.miners.total as usize, MINERS);
    assert_eq!(failed.miners.hashing as usize, MINERS);
    eventually("a later sample, still without the meter", || {
        control.sample(|s| (s.at_ms > failed.at_ms && s.meter_error.is_some()).then_some(()))
    })
    .await;

    site.meter.set_fault(Fault::Healthy);
    eventually("the meter read again", || {
        control.sample(|s| (s.at_ms > failed.at_ms && s.meter_kw.is_some()).then_some(()))
    })
    .await;

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_dr_event_sleeps_every_miner_acknowledges_and_wakes_them_after_its_end() {
    let (site, control, _agent, running) = start_all(None).await;
    let start = now_ms();
    let event = directive("dr-now", start, start + 3_000);
    control.set_dr(Some(event.clone()));

    eventually("every miner asleep", || {
        site.all(Phase::Asleep).then_some(())
    })
    .await;
    let (id, acks) = eventually("the acknowledgements", || {
        control.recorded(|r| r.acks.first().cloned())
    })
    .await;
    assert_eq!(id, "dr-now");
    let acked: BTreeSet<String> = acks.miners.iter().map(|m| m.miner.clone()).collect();
    assert_eq!(acks.miners.len(), MINERS);
    assert_eq!(acked, site.addrs(), "one row per miner");
    for m in &acks.miners {
        assert_eq!(m.error, None, "{m:?}");
        let acknowledged = m.acknowledged_ms.unwrap_or_else(|| panic!("{m:?}"));
        let confirmed = m.confirmed_ms.unwrap_or_else(|| panic!("{m:?}"));
        assert!(
            (event.starts_at_ms..event.ends_at_ms).contains(&acknowledged),
            "{m:?} outside {event:?}"
        );
        assert!(confirmed >= acknowledged, "{m:?}");
    }
    eventually("a heartbeat with every miner asleep", || {
        control.sample(|s| (s.miners.asleep as usize == MINERS).then_some(()))
    })
    .await;

    eventually("every miner hashing again", || {
        site.all(Phase::Hashing).then_some(())
    })
    .await;
    assert!(
        now_ms() >= event.ends_at_ms,
        "the miners were woken before the end"
    );
    for unit in site.fleet.units() {
        let commands: Vec<Curtail> = unit.curtails.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            commands,
            [Curtail::Sleep, Curtail::Wakeup],
            "unit {}",
            unit.index
        );
    }
    assert_eq!(control.recorded(|r| r.acks.len()), 1);

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_cancelled_dr_event_wakes_the_miners_before_its_end() {
    let (site, control, _agent, running) = start_all(None).await;
    let start = now_ms();
    let event = directive("dr-cancelled", start, start + 120_000);
    control.set_dr(Some(event.clone()));
    eventually("every miner asleep", || {
        site.all(Phase::Asleep).then_some(())
    })
    .await;
    eventually("the acknowledgements", || {
        control.recorded(|r| r.acks.first().map(drop))
    })
    .await;

    control.set_dr(None);
    eventually("every miner hashing again", || {
        site.all(Phase::Hashing).then_some(())
    })
    .await;
    assert!(now_ms() < event.ends_at_ms);

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn nothing_happens_before_a_dr_event_starts() {
    let (site, control, _agent, running) = start_all(None).await;
    // The wall clock and the runtime's clock read together, to place the start on the latter.
    let (t0, w0) = (Instant::now(), now_ms());
    let start = w0 + 2_000;
    let start_instant = t0 + Duration::from_millis(u64::try_from(start - w0).unwrap());
    control.set_dr(Some(directive("dr-later", start, start + 2_000)));

    while now_ms() < start - 50 {
        for unit in site.fleet.units() {
            assert!(
                unit.curtails.is_empty() && unit.phase == Phase::Hashing,
                "unit {} before the start: {:?}, {:?}",
                unit.index,
                unit.phase,
                unit.curtails
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("every miner asleep", || {
        site.all(Phase::Asleep).then_some(())
    })
    .await;
    for unit in site.fleet.units() {
        let (command, at) = unit.curtails[0];
        assert_eq!(command, Curtail::Sleep);
        // A few ms for the two clocks' readings, each rounded to the ms.
        assert!(
            at + Duration::from_millis(5) >= start_instant,
            "unit {} slept {:?} before the start",
            unit.index,
            start_instant - at
        );
    }

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn an_agent_down_at_the_end_of_its_event_wakes_the_miners_when_it_is_back() {
    let (site, control, agent, running) = start_all(None).await;
    let start = now_ms();
    let event = directive("dr-restart", start, start + 2_000);
    control.set_dr(Some(event.clone()));
    eventually("every miner asleep", || {
        site.all(Phase::Asleep).then_some(())
    })
    .await;

    // Shutdown leaves the miners as they are: a restarted agent resumes the event.
    running.stop().await;
    assert!(site.all(Phase::Asleep), "shutdown woke the miners");
    while now_ms() <= event.ends_at_ms {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(site.all(Phase::Asleep), "someone woke the miners");

    // Back after the end, the event over: the miners it had put to sleep are woken.
    let running = RunningAgent::start(agent.config(&control.url, Some(site.power())));
    eventually("every miner hashing again", || {
        site.all(Phase::Hashing).then_some(())
    })
    .await;

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_site_without_miners_ignores_dr_and_sends_no_samples() {
    let control = RunningControl::start(desired(None)).await;
    let agent = Agent::new();
    let running = RunningAgent::start(agent.config(&control.url, None));
    let start = now_ms();
    control.set_dr(Some(directive("dr-none", start, start + 60_000)));
    eventually("a heartbeat of the state with the directive", || {
        control.recorded(|r| (r.converged == 2).then_some(()))
    })
    .await;
    // A few heartbeats more: none carries a sample, and nothing is acknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    control.recorded(|r| {
        assert!(r.samples.is_empty(), "{:?}", r.samples);
        assert!(r.acks.is_empty());
    });
    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn bad_fleet_options_are_refused_at_the_start() {
    let agent = Agent::new();
    let mut power = PowerConfig {
        miners: Vec::new(),
        meter: None,
        sample_every: Duration::from_secs(1),
        fleet: FleetOptions::default(),
        gpu_group: None,
    };
    power.fleet.parallelism = 0;
    let result = run(
        agent.config("http://127.0.0.1:9", Some(power)),
        CancellationToken::new(),
    );
    let err = tokio::time::timeout(DEADLINE, result)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::BadPowerConfig { .. }), "{err}");
    assert!(err.to_string().contains("parallelism"), "{err}");
}

#[tokio::test]
async fn a_plan_sleeps_some_miners_sets_the_others_to_its_target_and_reports_it() {
    let (site, control, _agent, running) = start_all(None).await;
    control.set_plan(Some(plan("plan-1", 20, 12, 3_000.0)));
    let report = eventually("the plan's report", || control.report("plan-1")).await;
    assert_eq!(report.outcome, PlanOutcome::Applied, "{report:?}");
    assert_eq!(
        (
            report.miners_hashing,
            report.miners_asleep,
            report.miners_unconfirmed
        ),
        (12, 8, 0)
    );
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(report.meter_kw.is_some(), "{report:?}");
    let addrs = site.fleet.addrs().to_vec();
    for unit in site.fleet.units() {
        let i = addrs.iter().position(|a| *a == unit.addr).unwrap();
        if i < 12 {
            assert_eq!(unit.phase, Phase::Hashing, "unit {i}");
            assert!(
                unit.watts <= 3_000.0 * 1.05,
                "unit {i} draws {} W",
                unit.watts
            );
            assert_ne!(unit.profile, "default", "unit {i}");
        } else {
            assert_eq!(unit.phase, Phase::Asleep, "unit {i}");
        }
    }

    // The same targets again under a new plan: nothing is commanded, and it is confirmed.
    let before: Vec<(usize, String)> = site
        .fleet
        .units()
        .iter()
        .map(|u| (u.curtails.len(), u.profile.clone()))
        .collect();
    control.set_plan(Some(plan("plan-2", 20, 12, 3_000.0)));
    let again = eventually("the second plan's report", || control.report("plan-2")).await;
    assert_eq!(again.outcome, PlanOutcome::Applied, "{again:?}");
    assert_eq!((again.miners_hashing, again.miners_asleep), (12, 8));
    let after: Vec<(usize, String)> = site
        .fleet
        .units()
        .iter()
        .map(|u| (u.curtails.len(), u.profile.clone()))
        .collect();
    assert_eq!(before, after, "a repeated plan sent no command");

    // Every miner hashing again: the sleepers are woken.
    control.set_plan(Some(plan("plan-3", 20, 20, 3_500.0)));
    let all = eventually("the third plan's report", || control.report("plan-3")).await;
    assert_eq!(
        (all.outcome, all.miners_hashing),
        (PlanOutcome::Applied, 20),
        "{all:?}"
    );
    // Woken at their target, they finish ramping up by themselves.
    eventually("every miner hashing", || {
        site.all(Phase::Hashing).then_some(())
    })
    .await;

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn samples_taken_while_the_control_plane_is_away_reach_it_when_it_is_back() {
    let (_site, control, _agent, running) = start_all(None).await;
    control.fake.recorded.lock().unwrap().refuse_heartbeats = true;
    let away_from = now_ms();
    // Sampled every 100 ms: about 15 samples while every heartbeat is refused.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let away_until = now_ms();
    control.fake.recorded.lock().unwrap().refuse_heartbeats = false;
    let instants = eventually("a sample taken after the outage", || {
        control.recorded(|r| {
            let mut at: Vec<i64> = r.samples.iter().map(|s| s.at_ms).collect();
            at.sort_unstable();
            at.dedup();
            at.last()
                .is_some_and(|&last| last > away_until)
                .then_some(at)
        })
    })
    .await;
    let during: Vec<i64> = instants
        .iter()
        .copied()
        .filter(|&at| away_from <= at && at <= away_until)
        .collect();
    assert!(during.len() >= 10, "{during:?}");
    // No hole in the series: every round's sample came, late.
    let widest = instants
        .windows(2)
        .filter(|w| w[1] >= away_from && w[0] <= away_until)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    assert!(widest < 1_000, "a gap of {widest} ms in {instants:?}");
    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_plan_applied_past_its_interval_is_still_reported() {
    let (_site, control, _agent, running) = start_all(None).await;
    control.fake.recorded.lock().unwrap().refuse_reports = true;
    let mut p = plan("plan-late", 20, 20, 3_000.0);
    p.ends_at_ms = now_ms() + 1_500;
    let ends_at_ms = p.ends_at_ms;
    control.set_plan(Some(p));
    // The control plane is away until the plan's interval is over.
    eventually("a refused report past the plan's interval", || {
        let refused = control.recorded(|r| r.reports_refused);
        (refused > 0 && now_ms() > ends_at_ms + 500).then_some(())
    })
    .await;
    control.fake.recorded.lock().unwrap().refuse_reports = false;
    let report = eventually("the late plan's report", || control.report("plan-late")).await;
    assert_eq!(report.outcome, PlanOutcome::Applied, "{report:?}");
    assert_eq!(report.miners_hashing, 20);
    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_plan_for_other_miners_is_reported_failed_and_not_applied() {
    let (site, control, _agent, running) = start_all(None).await;
    control.set_plan(Some(plan("plan-x", 30, 0, 0.0)));
    let report = eventually("the plan's report", || control.report("plan-x")).await;
    assert_eq!(report.outcome, PlanOutcome::Failed, "{report:?}");
    assert!(report.problems[0].contains("30 miners"), "{report:?}");
    assert_eq!(report.miners_unconfirmed, 30);
    assert!(site.all(Phase::Hashing), "nothing was slept");
    assert!(site.fleet.units().iter().all(|u| u.curtails.is_empty()));

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_dr_event_comes_first_and_the_plan_is_applied_after_it() {
    let (site, control, _agent, running) = start_all(None).await;
    let start = now_ms();
    control.set_dr(Some(directive("dr-1", start, start + 2_000)));
    eventually("every miner asleep", || {
        site.all(Phase::Asleep).then_some(())
    })
    .await;
    control.set_plan(Some(plan("plan-after", 20, 5, 3_000.0)));
    // Not applied while the event holds the miners...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        control.report("plan-after").is_none(),
        "applied during the event"
    );
    assert!(site.all(Phase::Asleep));
    // ...then applied once it ended: only the plan's five are woken.
    let report = eventually("the plan's report", || control.report("plan-after")).await;
    assert!(now_ms() >= start + 2_000);
    assert_eq!(report.outcome, PlanOutcome::Applied, "{report:?}");
    assert_eq!((report.miners_hashing, report.miners_asleep), (5, 15));
    let hashing = site
        .fleet
        .units()
        .iter()
        .filter(|u| matches!(u.phase, Phase::Hashing | Phase::RampingUp))
        .count();
    assert_eq!(hashing, 5);

    running.stop().await;
    control.shut_down().await;
}

#[tokio::test]
async fn a_dr_event_interrupts_a_plans_wake_and_is_shed_at_once() {
    let site = SimSite::start().await;
    let control = RunningControl::start(desired(None)).await;
    let agent = Agent::new();
    // Waves of two, 5 s apart: waking the 20 miners would take 45 s.
    let mut power = site.power();
    power.fleet.wave_size = 2;
    power.fleet.wave_gap = Duration::from_secs(5);
    let running = RunningAgent::start(agent.config(&control.url, Some(power)));
    eventually("a heartbeat with every miner hashing", || {
        control.sample(|s| (s.miners.hashing as usize == MINERS).then_some(()))
    })
    .await;
    control.set_plan(Some(plan("plan-sleep", 20, 0, 3_000.0)));
    eventually("every miner asleep under the plan", || {
        control.report("plan-sleep").map(|_| ())
    })
    .await;
    assert!(site.all(Phase::Asleep));

    // A plan that wakes every miner, and a DR event a moment into its first waves.
    control.set_plan(Some(plan("plan-wake", 20, 20, 3_000.0)));
    eventually("the plan's first wave", || {
        site.fleet
            .units()
            .iter()
            .any(|u| u.curtails.len() > 1)
            .then_some(())
    })
    .await;
    let start = now_ms();
    control.set_dr(Some(directive("dr-1", start, start + 60_000)));
    let report = eventually("the interrupted plan's report", || {
        control.report("plan-wake")
    })
    .await;
    assert_eq!(report.outcome, PlanOutcome::Partial, "{report:?}");
    assert!(
        report.problems[0].contains("interrupted by a demand-response event"),
        "{report:?}"
    );
    eventually("every miner asleep for the event", || {
        site.all(Phase::Asleep).then_some(())
    })
    .await;
    let acked = eventually("the event's acknowledgements", || {
        control.recorded(|r| {
            r.acks
                .iter()
                .find(|(id, _)| id == "dr-1")
                .map(|(_, a)| a.clone())
        })
    })
    .await;
    assert_eq!(acked.miners.len(), MINERS);
    // Well before the plan's waves would have let go of the miners.
    assert!(
        now_ms() - start < 15_000,
        "shed {} ms after the event's start",
        now_ms() - start
    );

    running.stop().await;
    control.shut_down().await;
}
