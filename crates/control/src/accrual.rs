//! Accrues dedicated deployments' replica time: every [`ACCRUE_EVERY`], each dedicated
//! deployment is charged for the replicas it holds on ready sites (placed, whether serving
//! requests or not), for the wall time since the last accrual, cut at hour boundaries. Time
//! while the control plane was down is not charged: nothing watched the replicas then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wattmesh_proto::api::ReplicaState;
use wattmesh_store::{ReplicaSeconds, Store, StoreError};

use crate::clock::now_ms;
use crate::invoice::split_by_hour;
use crate::liveness::Liveness;
use crate::reconciler::Reconciler;

/// How often replica time is written: a crash loses at most this much of it.
pub(crate) const ACCRUE_EVERY: Duration = Duration::from_secs(10);

/// Runs until `stop`.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    reconciler: Arc<Reconciler>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(ACCRUE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = now_ms();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        match accrue(&*store, &reconciler.liveness, last, now).await {
            Ok(()) => last = now,
            // Kept for the next tick, which charges the whole span.
            Err(e) => tracing::error!(error = %e, "accruing dedicated replica time"),
        }
    }
}

async fn accrue(
    store: &dyn Store,
    liveness: &Liveness,
    from_ms: i64,
    to_ms: i64,
) -> Result<(), StoreError> {
    let dedicated: BTreeMap<String, String> = store
        .list_deployments()
        .await?
        .into_iter()
        .filter_map(|d| Some((d.name, d.dedicated_to?)))
        .collect();
    if dedicated.is_empty() || to_ms <= from_ms {
        return Ok(());
    }
    let ready = liveness.ready_sites();
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for r in store.list_replicas().await? {
        if r.state != ReplicaState::Failed
            && ready.contains(&r.site)
            && let Some((name, _)) = dedicated.get_key_value(&r.deployment)
        {
            *held.entry(name.as_str()).or_default() += 1;
        }
    }
    let mut accrued = Vec::new();
    for (deployment, replicas) in held {
        for (hour_start_ms, ms) in split_by_hour(from_ms, to_ms) {
            accrued.push(ReplicaSeconds {
                deployment: deployment.to_owned(),
                tenant: dedicated[deployment].clone(),
                hour_start_ms,
                seconds: replicas * u64::try_from(ms / 1000).unwrap_or(0),
            });
        }
    }
    store.accrue_replica_seconds(&accrued).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_proto::api::{DeploymentSpec, Model, NodeSpec, SiteSpec, TenantSpec};
    use wattmesh_store::{NewReplica, SqliteStore};

    #[tokio::test]
    async fn dedicated_replicas_on_ready_sites_are_charged_by_the_hour() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        store.create_region("eu").await.unwrap();
        for site in ["s1", "s2"] {
            store
                .create_site(&SiteSpec {
                    name: site.into(),
                    region: "eu".into(),
                    power_price_usd_per_mwh: 1.into(),
                })
                .await
                .unwrap();
            store
                .create_node(&NodeSpec {
                    name: format!("{site}-n"),
                    site: site.into(),
                    memory_bytes: 1 << 30,
                })
                .await
                .unwrap();
        }
        store
            .create_model(&Model {
                name: "m".into(),
                kind: wattmesh_domain::ModelKind::Chat,
                artifact: "m".into(),
                memory_bytes: 1,
                context_tokens: 2048,
            })
            .await
            .unwrap();
        store
            .create_tenant(&TenantSpec {
                name: "acme".into(),
                plan: Default::default(),
                contact: None,
                limits: Default::default(),
            })
            .await
            .unwrap();
        for (name, dedicated) in [("own", Some("acme")), ("shared", None)] {
            store
                .create_deployment(&DeploymentSpec {
                    name: name.into(),
                    model: "m".into(),
                    replicas: 2,
                    dedicated_to: dedicated.map(str::to_owned),
                })
                .await
                .unwrap();
        }
        let placed: Vec<NewReplica> = [("own", "s1-n"), ("own", "s2-n"), ("shared", "s1-n")]
            .iter()
            .enumerate()
            .map(|(i, (d, n))| NewReplica {
                id: format!("r{i}"),
                deployment: (*d).into(),
                node: (*n).into(),
            })
            .collect();
        store.apply_placements(&placed, &[]).await.unwrap();
        // Only s1 is alive: one of the two dedicated replicas is held.
        let liveness = Liveness::new(Duration::from_secs(60));
        liveness.beat("s1");
        let hour = 3_600_000;
        accrue(&store, &liveness, hour - 30_000, hour + 90_000)
            .await
            .unwrap();
        accrue(&store, &liveness, hour + 90_000, hour + 100_000)
            .await
            .unwrap();
        let got = store.replica_seconds("acme", 0, 10 * hour).await.unwrap();
        let got: Vec<(i64, u64)> = got.iter().map(|r| (r.hour_start_ms, r.seconds)).collect();
        assert_eq!(got, vec![(0, 30), (hour, 100)]);
    }
}
