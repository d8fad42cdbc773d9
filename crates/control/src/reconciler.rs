//! The reconciler: the thin driver around [`plan`](crate::plan). One step reads a snapshot
//! from the store, plans, applies the diff, then publishes what watchers see — each site's
//! desired state and the gateway config — bumping a version only where the content changed.
//!
//! Steps run one at a time (an async mutex held for the whole step), whoever triggers them:
//! a mutating API call (so its response already reflects the new placement), a heartbeat
//! that changed something, or the periodic tick that notices sites going stale. Serializing
//! steps is what keeps two triggers from creating the same replica twice; the schema's
//! unique (deployment, node) is the backstop.
//!
//! Nudges coalesce: each takes a ticket after its change is stored, and a step records the
//! last ticket taken before it started reading. A nudge whose ticket a finished step covers
//! returns at once — that step read its change — so forty simultaneous DR creations wait for
//! two steps, not forty in a row.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use wattmesh_proto::agent::{DesiredState, ReplicaAssignment, ReplicaReport};
use wattmesh_proto::energy::DrDirective;
use wattmesh_proto::gateway::GatewayConfig;
use wattmesh_proto::plan::PlanDirective;
use wattmesh_store::{NewReplica, Store, StoreError};

use crate::liveness::Liveness;
use crate::{plan, views};

/// How often a step runs even when nothing asked for one (staleness has no event).
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// A gateway process counts as live this long after its last config poll: longer than one
/// long poll (25 s as gateways ask, 30 s at most) plus a retry's back-off.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(45);

const GATEWAY_SCOPE: &str = "gateway";

fn site_scope(site: &str) -> String {
    format!("site/{site}")
}

/// What long-pollers watch: replaced as a whole on every publish that changed a version.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    pub desired: BTreeMap<String, DesiredState>,
    pub gateway: GatewayConfig,
    pub unschedulable: BTreeMap<String, u32>,
    /// Nodes the power plans in force have off (see [`plan::parked_nodes`]).
    pub parked: BTreeSet<String>,
}

impl Published {
    pub(crate) fn desired_for(&self, site: &str) -> DesiredState {
        self.desired.get(site).cloned().unwrap_or(DesiredState {
            version: 0,
            replicas: Vec::new(),
            dr: None,
            plan: None,
        })
    }
}

/// What a site's desired state holds besides its version.
type SiteContent = (
    Vec<ReplicaAssignment>,
    Option<DrDirective>,
    Option<PlanDirective>,
);

/// What a step remembers from the last one: versions and the content they stood for.
#[derive(Debug, Default)]
struct StepState {
    versions: BTreeMap<String, u64>,
    last_sites: BTreeMap<String, SiteContent>,
    last_gateway: Option<GatewayConfig>,
    /// The last nudge ticket a finished step covers.
    covered: u64,
}

pub(crate) struct Reconciler {
    store: Arc<dyn Store>,
    pub(crate) liveness: Liveness,
    /// Gateway processes polling the config: how many share every rate limit. In memory like
    /// sites' liveness; after a restart each gateway counts again at its next poll (until
    /// then the ones already back enforce a larger share, briefly).
    pub(crate) gateways: Liveness,
    /// Replicas' access tokens by (site, replica id), as their agents reported them. In memory
    /// only — a credential is never written to the store — and forgotten on restart like
    /// every other replica report; agents tell it again within a heartbeat.
    replica_tokens: std::sync::Mutex<BTreeMap<(String, String), String>>,
    step: Mutex<StepState>,
    published: watch::Sender<Arc<Published>>,
    /// Tickets handed to nudges; see the module docs.
    tickets: AtomicU64,
    #[cfg(test)]
    steps_run: AtomicU64,
}

impl Reconciler {
    /// Versions start from the stored ones so a watcher never sees one go backwards.
    pub(crate) async fn new(store: Arc<dyn Store>, liveness: Liveness) -> Result<Self, StoreError> {
        let versions = store.versions().await?;
        let (published, _) = watch::channel(Arc::new(Published::default()));
        Ok(Self {
            store,
            liveness,
            gateways: Liveness::new(GATEWAY_TIMEOUT),
            replica_tokens: std::sync::Mutex::default(),
            step: Mutex::new(StepState {
                versions,
                ..StepState::default()
            }),
            published,
            tickets: AtomicU64::new(0),
            #[cfg(test)]
            steps_run: AtomicU64::new(0),
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    pub(crate) fn current(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// Takes the access tokens in `site`'s replica reports; returns whether any changed.
    pub(crate) fn note_tokens(&self, site: &str, reports: &[ReplicaReport]) -> bool {
        let mut tokens = self
            .replica_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = false;
        for r in reports {
            let key = (site.to_owned(), r.id.clone());
            match &r.access_token {
                Some(t) if tokens.get(&key) != Some(t) => {
                    tokens.insert(key, t.clone());
                    changed = true;
                }
                Some(_) => {}
                None => changed |= tokens.remove(&key).is_some(),
            }
        }
        changed
    }

    /// Makes sure a step starts after a change that already succeeded, running one unless a
    /// step that started later has finished meanwhile; a failure is logged and left to the
    /// next tick, since the caller's own change is stored either way.
    pub(crate) async fn nudge(&self) {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.step.lock().await;
        if state.covered >= ticket {
            return;
        }
        if let Err(e) = self.step_locked(&mut state).await {
            tracing::error!(error = %e, "reconcile failed; retrying on the next tick");
        }
    }

    /// Steps every [`TICK`] until `stop`.
    pub(crate) async fn tick_until(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.nudge().await,
            }
        }
    }

    /// One reconcile step.
    pub(crate) async fn step(&self) -> Result<(), StoreError> {
        let mut state = self.step.lock().await;
        self.step_locked(&mut state).await
    }

    /// Counts the reconcile steps run, for tests.
    #[cfg(test)]
    pub(crate) fn steps_run(&self) -> u64 {
        self.steps_run.load(Ordering::SeqCst)
    }

    async fn step_locked(&self, state: &mut StepState) -> Result<(), StoreError> {
        // Every ticket taken by now belongs to a change already stored: this step reads it.
        let covers = self.tickets.load(Ordering::SeqCst);
        #[cfg(test)]
        self.steps_run.fetch_add(1, Ordering::SeqCst);
        self.reconcile(state).await?;
        state.covered = state.covered.max(covers);
        Ok(())
    }

    async fn reconcile(&self, state: &mut StepState) -> Result<(), StoreError> {
        let store = &*self.store;
        let ready = self.liveness.ready_sites();
        let nodes = store.list_nodes().await?;
        let deployments = store.list_deployments().await?;
        let mut replicas = store.list_replicas().await?;
        // Events start and end, and plans come into force, with time: the tick republishes.
        let now_ms = crate::clock::now_ms();
        let mut plans: BTreeMap<String, PlanDirective> = store
            .current_power_plans(now_ms)
            .await?
            .into_iter()
            .map(|p| (p.site, p.directive))
            .collect();
        // The plans' GPU nodes off take no replicas: replica scale follows the power plan.
        let parked = plan::parked_nodes(&nodes, &plans);

        let plan = plan::plan(&nodes, &ready, &parked, &deployments, &replicas);
        if !plan.add.is_empty() || !plan.remove.is_empty() {
            let add: Vec<NewReplica> = plan
                .add
                .iter()
                .map(|p| NewReplica {
                    id: uuid::Uuid::new_v4().to_string(),
                    deployment: p.deployment.clone(),
                    node: p.node.clone(),
                })
                .collect();
            tracing::info!(
                added = add.len(),
                removed = plan.remove.len(),
                parked_nodes = parked.len(),
                "placement changed"
            );
            store.apply_placements(&add, &plan.remove).await?;
            replicas = store.list_replicas().await?;
        }

        let sites = store.list_sites().await?;
        let by_site = views::assignments(&sites, &replicas);
        let open_events = store.open_dr_events(now_ms).await?;
        let mut directives = views::dr_directives(&open_events);
        let mut gateway = views::gateway_config(&views::GatewayInputs {
            keys: &store.list_api_keys().await?,
            tenants: &store.list_tenants().await?,
            prices: &store.list_prices().await?,
            models: &store.list_models().await?,
            deployments: &deployments,
            replicas: &replicas,
            ready_sites: &ready,
            shedding_sites: &views::shedding_sites(&open_events, now_ms),
            replica_tokens: &self
                .replica_tokens
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            // Keys expire and prices come into force with time: the tick republishes.
            now_ms,
        });
        gateway.gateways = u32::try_from(self.gateways.prune_and_count())
            .unwrap_or(u32::MAX)
            .max(1);

        let mut next = Published {
            unschedulable: plan.unschedulable,
            parked,
            ..Published::default()
        };
        let mut changed = {
            let published = self.published.borrow();
            published.unschedulable != next.unschedulable || published.parked != next.parked
        };
        for (site, assigned) in by_site {
            let scope = site_scope(&site);
            let content = (assigned, directives.remove(&site), plans.remove(&site));
            if state.last_sites.get(&site) != Some(&content) {
                self.bump(state, &scope).await?;
                state.last_sites.insert(site.clone(), content.clone());
                changed = true;
            }
            let version = state.versions.get(&scope).copied().unwrap_or(0);
            let (replicas, dr, plan) = content;
            next.desired.insert(
                site,
                DesiredState {
                    version,
                    replicas,
                    dr,
                    plan,
                },
            );
        }
        if state.last_gateway.as_ref() != Some(&gateway) {
            self.bump(state, GATEWAY_SCOPE).await?;
            state.last_gateway = Some(gateway.clone());
            changed = true;
        }
        next.gateway = GatewayConfig {
            version: state.versions.get(GATEWAY_SCOPE).copied().unwrap_or(0),
            ..gateway
        };
        if changed {
            self.published.send_replace(Arc::new(next));
        }
        Ok(())
    }

    /// Moves a version on, storing it first so a restart never reuses a number.
    async fn bump(&self, state: &mut StepState, scope: &str) -> Result<(), StoreError> {
        let next = state.versions.get(scope).copied().unwrap_or(0) + 1;
        self.store.set_version(scope, next).await?;
        state.versions.insert(scope.to_owned(), next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_store::SqliteStore;

    async fn reconciler(dir: &std::path::Path) -> Arc<Reconciler> {
        let store = SqliteStore::open(&dir.join("wattmesh.db")).await.unwrap();
        let liveness = Liveness::new(Duration::from_secs(10));
        Arc::new(Reconciler::new(Arc::new(store), liveness).await.unwrap())
    }

    #[tokio::test]
    async fn a_nudge_after_a_finished_step_always_runs_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler(dir.path()).await;
        for n in 1..=3 {
            r.nudge().await;
            assert_eq!(
                r.steps_run(),
                n,
                "each nudge came after the last step started"
            );
        }
    }

    #[tokio::test]
    async fn simultaneous_nudges_share_the_steps_that_started_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler(dir.path()).await;
        let nudges: Vec<_> = (0..40)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.nudge().await })
            })
            .collect();
        for n in nudges {
            n.await.unwrap();
        }
        // The first runs a step; the others wait, and the one step that starts after them all
        // covers them all.
        let steps = r.steps_run();
        assert!((1..=3).contains(&steps), "{steps} steps for 40 nudges");
    }
}
