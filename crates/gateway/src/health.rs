//! Active health checks: every routed replica's `/health` is probed on an interval with a short
//! timeout. A failed probe ejects the replica; a passing one lifts any ejection, including one
//! from a failed connect — so a replica that comes back is used again within one interval.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::GatewayState;
use crate::replicas::EJECTION;

/// The longest a probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes every `interval` until `shutdown`.
pub async fn run_health_checks(
    state: GatewayState,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = probe_all(&state) => {}
        }
    }
}

/// One round: probes all routed replicas at once and records the results.
pub async fn probe_all(state: &GatewayState) {
    let targets = state.snapshot().replica_endpoints();
    let ids: Vec<&str> = targets.iter().map(|(id, _)| id.as_str()).collect();
    state.replicas.retain(&ids);
    let probes = targets.iter().map(|(id, endpoint)| {
        let http = state.http.clone();
        let stats = state.replicas.get(id);
        let url = format!("{}/health", endpoint.trim_end_matches('/'));
        async move {
            let ok = http
                .get(&url)
                .timeout(PROBE_TIMEOUT)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                stats.restore();
            } else {
                if stats.healthy() {
                    tracing::info!(replica = %id, "health probe failed; ejected");
                }
                stats.eject(EJECTION);
            }
        }
    });
    futures::future::join_all(probes).await;
}
