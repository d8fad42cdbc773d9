//! Watches the control plane's gateway config by long-polling
//! `GET /api/v1/gateway/config?after=V&wait_s=25&instance=I` and publishes each new version to
//! the request handlers. `I` is new at every start: the control plane counts the live
//! processes, whose number divides every rate limit among them, and a process shutting down
//! says it leaves (`DELETE /api/v1/gateway/instances/I`), so the others' shares grow back at
//! once rather than when its polls go stale. On any failure it keeps the last config and
//! retries with capped backoff, so customers are served while the control plane is away
//! (static stability).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wattmesh_proto::gateway::GatewayConfig;

use crate::GatewayState;

/// How long the control plane may hold one poll.
const WAIT_S: u64 = 25;
/// Beyond the long poll itself, how long an answer may take before the poll counts as failed.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// How long a process shutting down waits for the control plane to hear it leave.
const LEAVE_WITHIN: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the gateway knows of its link to the control plane, for `/healthz` and the log.
#[derive(Debug, Default)]
pub struct ControlLink {
    reachable: AtomicBool,
    failures: AtomicU64,
}

impl ControlLink {
    /// Whether the last poll succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Failed polls since the last successful one.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn ok(&self) {
        self.reachable.store(true, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self) -> u64 {
        self.reachable.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Long-polls `control_url` until `shutdown`, publishing configs into `state`.
pub async fn watch_control(
    state: GatewayState,
    control_url: String,
    token: String,
    shutdown: CancellationToken,
) {
    let base = control_url.trim_end_matches('/').to_owned();
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let mut backoff = BACKOFF_MIN;
    loop {
        let current = state.snapshot();
        // The first poll asks for whatever is current; later ones wait for a change.
        let url = if current.loaded {
            format!(
                "{base}/api/v1/gateway/config?after={}&wait_s={WAIT_S}&instance={instance}",
                current.version
            )
        } else {
            format!("{base}/api/v1/gateway/config?instance={instance}")
        };
        let fetch = async {
            state
                .http
                .get(&url)
                .bearer_auth(&token)
                .timeout(Duration::from_secs(WAIT_S) + POLL_SLACK)
                .send()
                .await?
                .error_for_status()?
                .json::<GatewayConfig>()
                .await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return leave(&state, &base, &token, &instance).await,
            r = fetch => r,
        };
        match result {
            Ok(config) => {
                backoff = BACKOFF_MIN;
                if !state.control.reachable() {
                    tracing::info!(version = config.version, "control plane reached");
                }
                state.control.ok();
                if !current.loaded || config.version != current.version {
                    tracing::debug!(version = config.version, "gateway config updated");
                    state.set_config(config);
                }
            }
            Err(e) => {
                if state.control.failed() == 1 {
                    tracing::warn!("control plane unreachable, serving the last config: {e}");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return leave(&state, &base, &token, &instance).await,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Tells the control plane this process no longer shares the limits; a control plane that
/// does not hear it counts the process out when its polls go stale.
async fn leave(state: &GatewayState, base: &str, token: &str, instance: &str) {
    let sent = state
        .http
        .delete(format!("{base}/api/v1/gateway/instances/{instance}"))
        .bearer_auth(token)
        .timeout(LEAVE_WITHIN)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    match sent {
        Ok(_) => tracing::info!("left the control plane's count of gateway processes"),
        Err(e) => tracing::warn!("could not tell the control plane this gateway leaves: {e}"),
    }
}
