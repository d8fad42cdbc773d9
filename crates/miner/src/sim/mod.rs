//! The miner simulator: one process serves hundreds of simulated miners, each on its own TCP
//! port, speaking the CGMiner API with LuxOS's extensions exactly as [`crate::client`] expects
//! a real one to. Tests, benches and `wattmesh up` drive it over the network like a site's
//! fleet, and read the physics ([`SimFleet::total_watts`], [`SimFleet::unit`]) the way a meter
//! and a technician would.
//!
//! - [`mod@unit`]: one unit's physics (pure, over simulated seconds).
//! - `commands`: the API's replies for one unit (pure).
//! - `server`: the sockets.
//! - `shared`: what the servers share (units behind locks, the clock, counters).
//!
//! Time: simulated seconds are `tokio::time::Instant` seconds since start, times
//! [`SimOptions::speed`]. Paused-time tests advance the sim with `tokio::time::advance`
//! through [`SimFleet::call`] (no sockets: tokio's paused clock jumps ahead while sockets are
//! in flight); tests over TCP run in real time at a higher speed, so an 8 s ramp takes 0.2 s.
//! Failures a field sees are injected per unit: [`Fault`]s, [`SimFleet::wake_self`],
//! [`SimFleet::set_ambient`].

mod commands;
mod server;
mod shared;
pub mod unit;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wattmesh_domain::mining::AsicModel;

pub use commands::{SESSION_IDLE_S, sim_code};
pub use server::MAX_REQUEST_BYTES;
pub use unit::{Phase, Profile};

use shared::{Shared, UnitState};

use crate::api::{self, Reply, Request};
use crate::luxos::Curtail;

/// What can go wrong starting or poking the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulated miner {index}: cannot listen on {addr}: {source}")]
    Bind {
        index: usize,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("simulated miner {index}: {what}")]
    BadSpec { index: usize, what: String },
    #[error("simulator options: {0}")]
    BadOptions(String),
    #[error("no simulated miner {0}")]
    NoSuchUnit(usize),
    #[error("simulated miner {index}: {source}")]
    Api {
        index: usize,
        #[source]
        source: api::ApiError,
    },
}

/// One unit to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSpec {
    pub model: AsicModel,
    /// Its power profile ([`unit::profiles`]): `default` is nominal power.
    pub profile: String,
    pub ambient_c: f64,
    /// Starts asleep rather than hashing.
    pub asleep: bool,
}

impl UnitSpec {
    /// `model` hashing at its default profile at 25 °C.
    pub fn new(model: AsicModel) -> UnitSpec {
        UnitSpec {
            model,
            profile: "default".into(),
            ambient_c: 25.0,
            asleep: false,
        }
    }
}

/// How the fleet listens and how fast its time runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    pub ip: IpAddr,
    /// Unit `i` listens on `base_port + i`; `None`: each gets a free port.
    pub base_port: Option<u16>,
    /// Simulated seconds per second (1: real time).
    pub speed: f64,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: None,
            speed: 1.0,
        }
    }
}

/// A failure injected into one unit's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Accepts connections and never answers (a hung control board).
    Silent,
    /// Closes every connection at once without a word.
    Hangup,
}

/// One unit as the simulator sees it, at the moment it was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitView {
    pub index: usize,
    pub addr: SocketAddr,
    pub model: &'static str,
    pub phase: Phase,
    pub watts: f64,
    pub ths: f64,
    pub profile: String,
    pub ambient_c: f64,
    pub session_held: bool,
    pub fault: Fault,
    /// Every `curtail` the unit obeyed, with when it arrived.
    pub curtails: Vec<(Curtail, Instant)>,
}

/// A running fleet of simulated miners. Dropping it stops the servers; [`SimFleet::shutdown`]
/// also waits for them.
pub struct SimFleet {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for SimFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFleet")
            .field("units", &self.addrs.len())
            .finish()
    }
}

impl SimFleet {
    /// Starts `units` on free ports of 127.0.0.1, in real time.
    pub async fn start(units: Vec<UnitSpec>) -> Result<SimFleet, SimError> {
        SimFleet::start_with(units, SimOptions::default()).await
    }

    /// Starts `units` as `options` say.
    pub async fn start_with(
        units: Vec<UnitSpec>,
        options: SimOptions,
    ) -> Result<SimFleet, SimError> {
        if !(options.speed.is_finite() && options.speed > 0.0) {
            return Err(SimError::BadOptions(format!(
                "speed must be > 0, not {}",
                options.speed
            )));
        }
        let origin = Instant::now();
        let mut states = Vec::with_capacity(units.len());
        let mut listeners = Vec::with_capacity(units.len());
        for (index, spec) in units.into_iter().enumerate() {
            if !spec.ambient_c.is_finite() {
                let what = format!("ambient temperature {}", spec.ambient_c);
                return Err(SimError::BadSpec { index, what });
            }
            let unit =
                unit::Unit::new(spec.model, &spec.profile, spec.ambient_c, !spec.asleep, 0.0)
                    .ok_or_else(|| SimError::BadSpec {
                        index,
                        what: format!("{} has no profile {:?}", spec.model.name, spec.profile),
                    })?;
            let port = match options.base_port {
                None => 0,
                Some(base) => u16::try_from(index)
                    .ok()
                    .and_then(|i| base.checked_add(i))
                    .filter(|port| *port != 0)
                    .ok_or_else(|| {
                        SimError::BadOptions(format!("base port {base} + {index} is not a port"))
                    })?,
            };
            let addr = SocketAddr::new(options.ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SimError::Bind {
                    index,
                    addr,
                    source,
                })?;
            listeners.push(listener);
            states.push(Mutex::new(UnitState::new(unit, index)));
        }
        let addrs = listeners
            .iter()
            .enumerate()
            .map(|(index, l)| {
                l.local_addr().map_err(|source| SimError::Bind {
                    index,
                    addr: SocketAddr::new(options.ip, 0),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared {
            units: states,
            origin,
            speed: options.speed,
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        for (index, listener) in listeners.into_iter().enumerate() {
            shared
                .tracker
                .spawn(server::serve(listener, Arc::clone(&shared), index));
        }
        Ok(SimFleet { shared, addrs })
    }

    /// Each unit's API address, by index.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// What a meter on the miners' feeder reads now, W.
    pub fn total_watts(&self) -> f64 {
        let t = self.shared.now().sim_s;
        (0..self.len())
            .filter_map(|i| self.shared.lock(i))
            .map(|u| u.unit.watts(t))
            .sum()
    }

    /// The fleet's hashrate now, TH/s.
    pub fn total_ths(&self) -> f64 {
        let t = self.shared.now().sim_s;
        (0..self.len())
            .filter_map(|i| self.shared.lock(i))
            .map(|u| u.unit.ths(t))
            .sum()
    }

    /// Unit `index` now.
    pub fn unit(&self, index: usize) -> Result<UnitView, SimError> {
        let t = self.shared.now().sim_s;
        let u = self.shared.lock(index).ok_or(SimError::NoSuchUnit(index))?;
        Ok(UnitView {
            index,
            addr: self
                .addrs
                .get(index)
                .copied()
                .ok_or(SimError::NoSuchUnit(index))?,
            model: u.unit.model().name,
            phase: u.unit.phase(t),
            watts: u.unit.watts(t),
            ths: u.unit.ths(t),
            profile: u.unit.profile().name.clone(),
            ambient_c: u.unit.ambient_c(),
            session_held: u
                .session
                .as_ref()
                .is_some_and(|s| t - s.last_used_s < SESSION_IDLE_S),
            fault: u.fault,
            curtails: u.curtail_log.clone(),
        })
    }

    /// Every unit now.
    pub fn units(&self) -> Vec<UnitView> {
        (0..self.len()).filter_map(|i| self.unit(i).ok()).collect()
    }

    /// The most connections the units were serving at once since start (or the last reset):
    /// what bounds a fleet operation's parallelism, seen from the miners' side.
    pub fn max_concurrent_connections(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    pub fn reset_max_concurrent_connections(&self) {
        let open = self.shared.open.load(Ordering::SeqCst);
        self.shared.max_open.store(open, Ordering::SeqCst);
    }

    /// Answers `request` as unit `index` would over TCP, without a socket.
    pub fn call(&self, index: usize, request: &Request) -> Result<Vec<Reply>, SimError> {
        if index >= self.len() {
            return Err(SimError::NoSuchUnit(index));
        }
        let bytes = self.shared.handle(index, &request.encode());
        api::decode_replies(request, &bytes).map_err(|source| SimError::Api { index, source })
    }

    /// Injects `fault` into unit `index`'s API (its physics go on).
    pub fn set_fault(&self, index: usize, fault: Fault) -> Result<(), SimError> {
        self.with_unit(index, |u, _| u.fault = fault)
    }

    /// Unit `index` wakes up by itself, as miners do during events (FACTS.md's field failure).
    pub fn wake_self(&self, index: usize) -> Result<(), SimError> {
        self.with_unit(index, |u, t| u.unit.wakeup(t))
    }

    /// Changes unit `index`'s ambient temperature.
    pub fn set_ambient(&self, index: usize, ambient_c: f64) -> Result<(), SimError> {
        if !ambient_c.is_finite() {
            return Err(SimError::BadSpec {
                index,
                what: format!("ambient temperature {ambient_c}"),
            });
        }
        self.with_unit(index, |u, t| u.unit.set_ambient(t, ambient_c))
    }

    fn with_unit(&self, index: usize, f: impl FnOnce(&mut UnitState, f64)) -> Result<(), SimError> {
        let t = self.shared.now().sim_s;
        let mut unit = self.shared.lock(index).ok_or(SimError::NoSuchUnit(index))?;
        f(&mut unit, t);
        Ok(())
    }

    /// Stops every server and waits for their tasks to end.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
    }
}
