//! The SQLite store against a real file in a temp dir: CRUD, uniqueness, references, and that
//! reopening the file keeps everything (a control plane restart keeps its state).

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rust_decimal::Decimal;
use wattmesh_domain::ModelKind;
use wattmesh_proto::agent::{NodeReport, ReplicaReport};
use wattmesh_proto::api::{
    DeploymentSpec, KeyPriority, Limits, Model, NodeSpec, ReplicaState, SiteSpec, TenantSpec,
};
use wattmesh_store::{
    AgentRegistration, NewApiKey, NewReplica, SiteHeartbeat, SqliteStore, Store, StoreError,
};

async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("wattmesh.db")).await.unwrap()
}

fn site(name: &str, region: &str, price: &str) -> SiteSpec {
    SiteSpec {
        name: name.into(),
        region: region.into(),
        power_price_usd_per_mwh: price.parse().unwrap(),
    }
}

fn model(name: &str) -> Model {
    Model {
        name: name.into(),
        kind: ModelKind::Chat,
        artifact: name.into(),
        memory_bytes: 1 << 30,
        context_tokens: 4096,
    }
}

fn tenant(name: &str) -> TenantSpec {
    TenantSpec {
        name: name.into(),
        plan: Default::default(),
        contact: None,
        limits: Limits::default(),
    }
}

async fn seed(s: &SqliteStore) {
    s.create_region("us").await.unwrap();
    s.create_site(&site("georgia-1", "us", "42.5"))
        .await
        .unwrap();
    s.create_node(&NodeSpec {
        name: "g1".into(),
        site: "georgia-1".into(),
        memory_bytes: 8 << 30,
    })
    .await
    .unwrap();
    s.create_model(&model("smol")).await.unwrap();
    s.create_deployment(&DeploymentSpec {
        name: "chat".into(),
        model: "smol".into(),
        replicas: 2,
        dedicated_to: None,
    })
    .await
    .unwrap();
    s.create_tenant(&tenant("acme")).await.unwrap();
}

#[tokio::test]
async fn crud_round_trips_with_joins() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;

    let sites = s.list_sites().await.unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(
        sites[0].power_price_usd_per_mwh,
        "42.5".parse::<Decimal>().unwrap()
    );
    assert_eq!(sites[0].last_heartbeat, None);
    let nodes = s.list_nodes().await.unwrap();
    assert_eq!(
        (nodes[0].region.as_str(), nodes[0].memory_bytes),
        ("us", 8 << 30)
    );
    let d = s.get_deployment("chat").await.unwrap();
    assert_eq!((d.replicas, d.memory_bytes), (2, 1 << 30));

    s.apply_placements(
        &[NewReplica {
            id: "r1".into(),
            deployment: "chat".into(),
            node: "g1".into(),
        }],
        &[],
    )
    .await
    .unwrap();
    let r = s.list_replicas().await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].state,
            r[0].site.as_str(),
            r[0].region.as_str(),
            r[0].model.as_str()
        ),
        (ReplicaState::Pending, "georgia-1", "us", "smol")
    );

    assert_eq!(s.scale_deployment("chat", 5).await.unwrap().replicas, 5);
    s.delete_deployment("chat").await.unwrap();
    assert!(
        s.list_replicas().await.unwrap().is_empty(),
        "replicas go with their deployment"
    );
    assert!(matches!(
        s.delete_deployment("chat").await,
        Err(StoreError::NotFound {
            kind: "deployment",
            ..
        })
    ));
}

#[tokio::test]
async fn duplicates_conflict_and_missing_references_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;

    assert!(matches!(
        s.create_region("us").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_site(&site("georgia-1", "us", "1")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_site(&site("x", "mars", "1")).await,
        Err(StoreError::NotFound { kind: "region", .. })
    ));
    assert!(matches!(
        s.create_node(&NodeSpec {
            name: "n".into(),
            site: "nowhere".into(),
            memory_bytes: 1
        })
        .await,
        Err(StoreError::NotFound { kind: "site", .. })
    ));
    assert!(matches!(
        s.create_deployment(&DeploymentSpec {
            name: "d".into(),
            model: "nope".into(),
            replicas: 1,
            dedicated_to: None,
        })
        .await,
        Err(StoreError::NotFound { kind: "model", .. })
    ));
    assert!(matches!(
        s.create_tenant(&tenant("acme")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        matches!(s.delete_region("us").await, Err(StoreError::Conflict(_))),
        "has a site"
    );
    assert!(matches!(
        s.create_region("bad name!").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.create_region("").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.create_node(&NodeSpec {
            name: "big".into(),
            site: "georgia-1".into(),
            memory_bytes: u64::MAX
        })
        .await,
        Err(StoreError::Invalid(_))
    ));

    // One replica of a deployment per node, even when two reconciles race.
    let r = |id: &str| NewReplica {
        id: id.into(),
        deployment: "chat".into(),
        node: "g1".into(),
    };
    s.apply_placements(&[r("a")], &[]).await.unwrap();
    assert!(matches!(
        s.apply_placements(&[r("b")], &[]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.list_replicas().await.unwrap().len(), 1);
}

#[tokio::test]
async fn api_keys_are_listed_hashed_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    let key = |id: &str, tenant: &str| NewApiKey {
        id: id.into(),
        tenant: tenant.into(),
        name: Some("ci".into()),
        prefix: "sk-wm-abc".into(),
        secret_sha256: format!("hash-{id}"),
        models: None,
        expires_at: None,
        priority: KeyPriority::Interactive,
        limits: Limits::default(),
    };
    s.create_api_key(&key("k1", "acme")).await.unwrap();
    assert!(matches!(
        s.create_api_key(&key("k2", "ghost")).await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    s.revoke_api_key("k1", "admin").await.unwrap();
    let keys = s.list_api_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].revoked());
    assert!(matches!(
        s.revoke_api_key("nope", "admin").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn agents_register_heartbeat_and_only_touch_their_own_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    let reg = |site: &str, node: &str, token: &str| AgentRegistration {
        site: site.into(),
        region: "af".into(),
        power_price_usd_per_mwh: None,
        nodes: vec![NodeReport {
            name: node.into(),
            memory_bytes: 4 << 30,
        }],
        token_sha256: token.into(),
    };
    s.register_agent(&reg("addis-1", "a1", "t1")).await.unwrap();
    assert_eq!(
        s.agent_site("t1").await.unwrap().as_deref(),
        Some("addis-1")
    );
    // Re-registering replaces the token.
    s.register_agent(&reg("addis-1", "a1", "t2")).await.unwrap();
    assert_eq!(s.agent_site("t1").await.unwrap(), None);
    assert_eq!(
        s.agent_site("t2").await.unwrap().as_deref(),
        Some("addis-1")
    );
    assert!(
        s.get_site("addis-1")
            .await
            .unwrap()
            .last_heartbeat
            .is_some()
    );
    // A node name another site owns is refused.
    assert!(matches!(
        s.register_agent(&reg("addis-2", "g1", "t3")).await,
        Err(StoreError::Conflict(_))
    ));

    s.apply_placements(
        &[
            NewReplica {
                id: "mine".into(),
                deployment: "chat".into(),
                node: "a1".into(),
            },
            NewReplica {
                id: "theirs".into(),
                deployment: "chat".into(),
                node: "g1".into(),
            },
        ],
        &[],
    )
    .await
    .unwrap();
    let ready = |id: &str| ReplicaReport {
        id: id.into(),
        state: ReplicaState::Ready,
        endpoint: Some("http://127.0.0.1:9".into()),
        message: None,
        access_token: None,
    };
    let nodes = [NodeReport {
        name: "a1".into(),
        memory_bytes: 4 << 30,
    }];
    let reports = [ready("mine"), ready("theirs"), ready("unknown")];
    let hb = SiteHeartbeat {
        site: "addis-1",
        nodes: &nodes,
        replicas: &reports,
    };
    assert!(s.record_heartbeat(hb).await.unwrap());
    assert!(
        !s.record_heartbeat(hb).await.unwrap(),
        "an identical heartbeat changes nothing"
    );
    let states: Vec<_> = s
        .list_replicas()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("mine".into(), ReplicaState::Ready),
            ("theirs".into(), ReplicaState::Pending)
        ]
    );
}

#[tokio::test]
async fn reopening_the_file_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.insert_secret("admin", "abc").await.unwrap();
    s.set_version("gateway", 7).await.unwrap();
    s.close().await;
    drop(s);

    let s = open(dir.path()).await;
    assert_eq!(s.list_regions().await.unwrap().len(), 1);
    assert_eq!(s.list_deployments().await.unwrap()[0].name, "chat");
    assert_eq!(s.list_tenants().await.unwrap()[0].name, "acme");
    assert_eq!(s.secret("admin").await.unwrap().as_deref(), Some("abc"));
    assert!(matches!(
        s.insert_secret("admin", "x").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.versions().await.unwrap().get("gateway"), Some(&7));
}
