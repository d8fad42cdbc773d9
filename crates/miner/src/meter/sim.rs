//! [`SimMeter`]: a simulated site meter serving the register map over Modbus TCP, so that the
//! simulated sites of `wattmesh up`, the agent's tests and the DR benchmarks read a meter exactly
//! as they would read a real one.
//!
//! The site simulator holds a [`SiteLoad`] and sets the site's present load (kW) on it whenever
//! the load changes; the load integrates itself into imported energy exactly, as a
//! piecewise-constant load: at every change and every look, the energy since the previous one is
//! booked at the load that held until then, on `tokio::time::Instant` so paused-time tests
//! control it. The setter books the change synchronously, at the instant it is made: no task
//! stands between the simulator and the meter, so no change is ever booked late. Failure
//! injection ([`Fault`]) reproduces the meter failures the agent must survive.

use std::future::{Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_modbus::prelude::*;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::{DEFAULT_UNIT_ID, Image, MAP_LEN, MAX_READ_REGISTERS};

/// Phase-to-neutral voltage the simulated meter reports: a 277/480 V feeder, as on US sites.
const NOMINAL_VOLTAGE_V: f32 = 277.0;
/// Frequency the simulated meter reports (ERCOT's grid).
const NOMINAL_FREQUENCY_HZ: f32 = 60.0;

/// A failure the simulated meter can be told to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answers every valid request.
    #[default]
    Healthy,
    /// Accepts connections and requests but never answers, like a hung meter or gateway.
    Silent,
    /// Answers with the image of the moment it froze: power, energy and heartbeat stop moving,
    /// while the load keeps integrating underneath (the metrology runs on, only the
    /// communication module is stuck), so healing shows the true energy.
    Frozen,
}

// === impl SiteLoad ===

/// The load on a site's feeder, as the site simulator sets it, and the energy it has drawn:
/// what a meter on that feeder measures. Cloning gives another handle on the same load.
#[derive(Debug, Clone)]
pub struct SiteLoad {
    inner: Arc<Mutex<Metrology>>,
}

#[derive(Debug)]
struct Metrology {
    /// The load in force since `since`, as set: NaN or negative included.
    kw: f64,
    energy_wh: f64,
    since: Instant,
}

impl SiteLoad {
    /// A load of `kw` from now on, no energy drawn yet. Uses Tokio's clock: call it inside a
    /// runtime (the clock is the wall clock outside one).
    pub fn new(kw: f64) -> SiteLoad {
        SiteLoad {
            inner: Arc::new(Mutex::new(Metrology {
                kw,
                energy_wh: 0.0,
                since: Instant::now(),
            })),
        }
    }

    /// Sets the load from this instant on. A meter reports the value as it is, NaN or negative
    /// included, so tests can feed it impossible values; energy counts only finite, positive
    /// load (an import register never runs back).
    pub fn set_kw(&self, kw: f64) {
        let mut metrology = self.lock();
        metrology.advance(Instant::now());
        metrology.kw = kw;
    }

    /// The load in force.
    pub fn kw(&self) -> f64 {
        self.lock().kw
    }

    /// The energy drawn so far, kWh, to the present instant: the truth that a meter's register
    /// rounds down to the Wh.
    pub fn energy_kwh(&self) -> f64 {
        self.now().1 / 1000.0
    }

    /// The load in force and the energy in Wh, to the present instant.
    fn now(&self) -> (f64, f64) {
        let mut metrology = self.lock();
        metrology.advance(Instant::now());
        (metrology.kw, metrology.energy_wh)
    }

    fn lock(&self) -> MutexGuard<'_, Metrology> {
        // Plain numbers, valid after any panic that poisoned the lock.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Metrology {
    /// Books the energy of the load in force from `since` to `now`.
    fn advance(&mut self, now: Instant) {
        let hours = now.saturating_duration_since(self.since).as_secs_f64() / 3600.0;
        if self.kw.is_finite() && self.kw > 0.0 {
            self.energy_wh += self.kw * 1000.0 * hours;
        }
        self.since = now;
    }
}

// === impl SimMeter ===

/// A simulated meter serving the register map on a TCP listener, until
/// [`SimMeter::shutdown`] or drop.
pub struct SimMeter {
    addr: SocketAddr,
    comms: Arc<Comms>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for SimMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMeter")
            .field("addr", &self.addr)
            .field("fault", &self.comms.lock().fault)
            .finish()
    }
}

impl SimMeter {
    /// Serves the map on `listener` as unit [`DEFAULT_UNIT_ID`], measuring `load`. Must run
    /// inside a Tokio runtime (an error otherwise).
    pub fn start(listener: TcpListener, load: SiteLoad) -> io::Result<SimMeter> {
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let addr = listener.local_addr()?;
        let comms = Arc::new(Comms {
            unit_id: DEFAULT_UNIT_ID,
            load,
            state: Mutex::new(CommsState {
                counter: 0,
                fault: Fault::Healthy,
                frozen: None,
            }),
        });
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let service = MeterService {
            comms: Arc::clone(&comms),
        };
        tracker.spawn_on(serve(listener, service, cancel.clone()), &runtime);
        tracker.close();
        Ok(SimMeter {
            addr,
            comms,
            tracker,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
        })
    }

    /// Where the meter listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shows `fault` from now on (or heals, with [`Fault::Healthy`]).
    pub fn set_fault(&self, fault: Fault) {
        let mut state = self.comms.lock();
        state.frozen = match (fault, state.frozen) {
            (Fault::Frozen, Some(image)) => Some(image),
            (Fault::Frozen, None) => Some(self.comms.image(state.counter)),
            _ => None,
        };
        state.fault = fault;
    }

    /// Answers served so far: the heartbeat register's value (it wraps at `u32::MAX`).
    pub fn answers(&self) -> u32 {
        self.comms.lock().counter
    }

    /// Stops serving: closes the listener and every connection, and waits for its task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

/// The meter's communication side: what it serves and how it fails.
struct Comms {
    unit_id: u8,
    load: SiteLoad,
    state: Mutex<CommsState>,
}

struct CommsState {
    counter: u32,
    fault: Fault,
    /// The registers served while frozen.
    frozen: Option<[u16; MAP_LEN as usize]>,
}

impl Comms {
    fn lock(&self) -> MutexGuard<'_, CommsState> {
        // Plain numbers, valid after any panic that poisoned the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The registers at the present instant, with heartbeat `counter`.
    fn image(&self, counter: u32) -> [u16; MAP_LEN as usize] {
        let (kw, energy_wh) = self.load.now();
        Image {
            active_power_kw: kw as f32,
            // Rounded down, as meters do: the register never runs ahead of the truth.
            energy_wh: energy_wh as u64,
            counter,
            voltage_v: [NOMINAL_VOLTAGE_V; 3],
            frequency_hz: NOMINAL_FREQUENCY_HZ,
        }
        .encode()
    }
}

async fn serve(listener: TcpListener, service: MeterService, cancel: CancellationToken) {
    let on_connected = |stream, peer| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, peer, |_| Ok(Some(service.clone()))) }
    };
    let on_error = |err: io::Error| tracing::debug!(%err, "simulated meter: connection ended");
    let server = Server::new(listener);
    if let Err(err) = server
        .serve_until(&on_connected, on_error, cancel.cancelled_owned())
        .await
    {
        // tokio-modbus stops serving on an accept error (out of file descriptors, say).
        tracing::warn!(%err, "simulated meter stopped accepting connections");
    }
}

// === impl MeterService ===

#[derive(Clone)]
struct MeterService {
    comms: Arc<Comms>,
}

impl Service for MeterService {
    type Request = SlaveRequest<'static>;
    /// `None` sends no answer at all: how [`Fault::Silent`] is served.
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: SlaveRequest<'static>) -> Self::Future {
        ready(self.answer(request))
    }
}

impl MeterService {
    fn answer(&self, request: SlaveRequest<'static>) -> Result<Option<Response>, ExceptionCode> {
        let mut state = self.comms.lock();
        if state.fault == Fault::Silent {
            return Ok(None);
        }
        if request.slave != self.comms.unit_id {
            // What a Modbus TCP gateway answers for a unit it cannot reach.
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        let (start, count, holding) = match request.request {
            Request::ReadHoldingRegisters(start, count) => (start, count, true),
            Request::ReadInputRegisters(start, count) => (start, count, false),
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        if count == 0 || count > MAX_READ_REGISTERS {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let (start, end) = (usize::from(start), usize::from(start) + usize::from(count));
        if end > usize::from(MAP_LEN) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let image = match state.frozen {
            Some(image) => image,
            None => {
                state.counter = state.counter.wrapping_add(1);
                self.comms.image(state.counter)
            }
        };
        let words = image
            .get(start..end)
            .ok_or(ExceptionCode::IllegalDataAddress)?
            .to_vec();
        Ok(Some(if holding {
            Response::ReadHoldingRegisters(words)
        } else {
            Response::ReadInputRegisters(words)
        }))
    }
}
