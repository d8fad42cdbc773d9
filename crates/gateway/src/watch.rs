//! Watches the control plane's gateway config by long-polling
//! `GET /api/v1/gateway/config?after=V&wait_s=25`. On any failure it keeps the last config and
//! retries with backoff, so customers are served while the control plane is away.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wattmesh_proto::gateway::GatewayConfig;

use crate::snapshot::Snapshot;

const WAIT_S: u64 = 25;

pub async fn watch_control(
    http: reqwest::Client,
    control_url: String,
    token: String,
    config: tokio::sync::watch::Sender<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    let base = control_url.trim_end_matches('/').to_owned();
    let mut backoff = Duration::from_millis(250);
    loop {
        let version = config.borrow().version;
        let url = format!("{base}/api/v1/gateway/config?after={version}&wait_s={WAIT_S}");
        let fetch = async {
            let resp = http
                .get(&url)
                .bearer_auth(&token)
                .timeout(Duration::from_secs(WAIT_S + 10))
                .send()
                .await?
                .error_for_status()?;
            resp.json::<GatewayConfig>().await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = fetch => r,
        };
        match result {
            Ok(cfg) => {
                backoff = Duration::from_millis(250);
                let first = !config.borrow().loaded;
                if first || cfg.version != version {
                    tracing::debug!(version = cfg.version, "gateway config updated");
                    config.send_replace(Arc::new(Snapshot::from_config(cfg)));
                }
            }
            Err(e) => {
                tracing::warn!("control plane unreachable, serving the last config: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
