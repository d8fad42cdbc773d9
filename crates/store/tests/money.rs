//! The SQLite store's money and access paths against a real file: tenants, keys, gateways, the
//! price book, top-ups, idempotent usage ingest, usage reports and credit leases, and that a
//! restart (reopening the file, or migrating a 0001 database) keeps all of it.

// Helpers outside `#[test]` fns panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rust_decimal::Decimal;
use wattmesh_domain::ModelKind;
use wattmesh_domain::pricing::{TokenPrice, lease_grant};
use wattmesh_proto::api::{BillingPlan, KeyPriority, Limits, Model, TenantSpec};
use wattmesh_proto::billing::{CURRENCY, LedgerKind};
use wattmesh_proto::usage::{IngestReceipt, Outcome, UsageEvent};
use wattmesh_store::{
    NewApiKey, NewPrice, RatedEvent, SqliteStore, Store, StoreError, UsageGroup, UsageQuery,
    UsageTotal,
};

async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("wattmesh.db")).await.unwrap()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn model(name: &str) -> Model {
    Model {
        name: name.into(),
        kind: ModelKind::Chat,
        artifact: name.into(),
        memory_bytes: 1 << 30,
        context_tokens: 8192,
    }
}

fn tenant(name: &str, plan: BillingPlan) -> TenantSpec {
    TenantSpec {
        name: name.into(),
        plan,
        contact: None,
        limits: Limits::default(),
    }
}

fn key(id: &str, tenant: &str) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        tenant: tenant.into(),
        name: None,
        prefix: "sk-wm-x".into(),
        secret_sha256: format!("hash-{id}"),
        models: None,
        expires_at: None,
        priority: KeyPriority::Interactive,
        limits: Limits::default(),
    }
}

fn list_price(model: &str, input: &str, output: &str, from_ms: i64) -> NewPrice {
    NewPrice {
        model: model.into(),
        tenant: None,
        input_per_1m: d(input),
        output_per_1m: d(output),
        currency: CURRENCY.into(),
        effective_from: format!("t{from_ms}"),
        effective_from_ms: from_ms,
    }
}

/// A model `smol` and `big`, tenants `acme` (prepaid) and `beta` (pay as you go).
async fn seed(s: &SqliteStore) {
    s.create_model(&model("smol")).await.unwrap();
    s.create_model(&model("big")).await.unwrap();
    s.create_tenant(&tenant("acme", BillingPlan::Prepaid))
        .await
        .unwrap();
    s.create_tenant(&tenant("beta", BillingPlan::PayAsYouGo))
        .await
        .unwrap();
}

/// One finished request of `tenant` with `key` on `model`.
struct Use<'a> {
    id: &'a str,
    tenant: &'a str,
    key: &'a str,
    model: &'a str,
    at_ms: i64,
    prompt: u64,
    completion: u64,
}

/// Rates `u` at `price` (version and price), as the control plane does before ingest.
fn rated(u: &Use<'_>, price: Option<(u64, TokenPrice)>) -> RatedEvent {
    RatedEvent {
        event: UsageEvent {
            id: u.id.into(),
            request_id: format!("req-{}", u.id),
            tenant: u.tenant.into(),
            key_id: u.key.into(),
            model: u.model.into(),
            deployment: "chat".into(),
            replica: "r1".into(),
            site: "site-1".into(),
            region: "us".into(),
            priority: "normal".into(),
            prompt_tokens: u.prompt,
            completion_tokens: u.completion,
            started_at_ms: u.at_ms,
            ttft_ms: Some(12),
            duration_ms: 340,
            status: 200,
            outcome: Outcome::Completed,
        },
        price_version: price.map(|(v, _)| v),
        cost: price.map_or(Decimal::ZERO, |(_, p)| p.cost(u.prompt, u.completion)),
    }
}

fn price(input: &str, output: &str) -> TokenPrice {
    TokenPrice {
        input_per_1m: d(input),
        output_per_1m: d(output),
    }
}

fn receipt(accepted: u64, duplicates: u64) -> IngestReceipt {
    IngestReceipt {
        accepted,
        duplicates,
    }
}

// === tenants, keys, gateways ===

#[tokio::test]
async fn tenants_round_trip_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let limits = Limits {
        rpm: Some(60),
        tpm: Some(10_000),
        concurrency: None,
    };
    let created = s
        .create_tenant(&TenantSpec {
            name: "zeta".into(),
            plan: BillingPlan::Prepaid,
            contact: Some("ops@zeta.example".into()),
            limits,
        })
        .await
        .unwrap();
    assert_eq!(
        (created.plan, created.contact.as_deref(), created.limits),
        (BillingPlan::Prepaid, Some("ops@zeta.example"), limits)
    );
    assert_eq!(created.balance, Decimal::ZERO);
    s.create_tenant(&tenant("acme", BillingPlan::PayAsYouGo))
        .await
        .unwrap();
    assert_eq!(s.get_tenant("zeta").await.unwrap(), created);
    let names: Vec<_> = s
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "zeta"]);

    let tighter = Limits {
        concurrency: Some(2),
        ..Limits::default()
    };
    assert_eq!(
        s.set_tenant_limits("zeta", &tighter).await.unwrap().limits,
        tighter
    );
    assert_eq!(s.get_tenant("zeta").await.unwrap().limits, tighter);

    let zero = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l
    };
    let bad: [(&str, TenantSpec); 6] = [
        ("bad name", tenant("no spaces", BillingPlan::Prepaid)),
        ("empty name", tenant("", BillingPlan::Prepaid)),
        (
            "rpm 0",
            TenantSpec {
                limits: zero(|l| l.rpm = Some(0)),
                ..tenant("t1", BillingPlan::Prepaid)
            },
        ),
        (
            "tpm 0",
            TenantSpec {
                limits: zero(|l| l.tpm = Some(0)),
                ..tenant("t2", BillingPlan::Prepaid)
            },
        ),
        (
            "concurrency 0",
            TenantSpec {
                limits: zero(|l| l.concurrency = Some(0)),
                ..tenant("t3", BillingPlan::Prepaid)
            },
        ),
        (
            "contact too long",
            TenantSpec {
                contact: Some("x".repeat(257)),
                ..tenant("t4", BillingPlan::Prepaid)
            },
        ),
    ];
    for (why, spec) in bad {
        assert!(
            matches!(s.create_tenant(&spec).await, Err(StoreError::Invalid(_))),
            "{why}"
        );
    }
    assert!(matches!(
        s.create_tenant(&tenant("acme", BillingPlan::Prepaid)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.set_tenant_limits("zeta", &zero(|l| l.rpm = Some(0)))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.get_tenant("ghost").await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    assert!(matches!(
        s.set_tenant_limits("ghost", &tighter).await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    assert_eq!(
        s.list_tenants().await.unwrap().len(),
        2,
        "nothing half made"
    );
}

#[tokio::test]
async fn api_keys_keep_allow_lists_expiry_and_who_revoked_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    let limits = Limits {
        rpm: Some(5),
        ..Limits::default()
    };
    let full = NewApiKey {
        name: Some("batch jobs".into()),
        models: Some(vec!["smol".into(), "big".into()]),
        expires_at: Some(("2030-01-01T00:00:00Z".into(), 1_893_456_000_000)),
        priority: KeyPriority::Batch,
        limits,
        ..key("k1", "acme")
    };
    let k = s.create_api_key(&full).await.unwrap();
    assert_eq!(
        (
            k.models.clone(),
            k.expires_at.as_deref(),
            k.expires_at_ms,
            k.priority,
            k.limits
        ),
        (
            full.models.clone(),
            Some("2030-01-01T00:00:00Z"),
            Some(1_893_456_000_000),
            KeyPriority::Batch,
            limits
        )
    );
    assert_eq!((k.revoked(), k.last_used_ms), (false, None));
    s.create_api_key(&key("k2", "acme")).await.unwrap();

    let refused = [
        (
            "unknown model in the allow-list",
            NewApiKey {
                models: Some(vec!["smol".into(), "gpt-9".into()]),
                ..key("k3", "acme")
            },
        ),
        ("unknown tenant", key("k4", "ghost")),
        (
            "empty allow-list",
            NewApiKey {
                models: Some(vec![]),
                ..key("k5", "acme")
            },
        ),
        (
            "limit 0",
            NewApiKey {
                limits: Limits {
                    tpm: Some(0),
                    ..Limits::default()
                },
                ..key("k6", "acme")
            },
        ),
        ("same id", key("k1", "acme")),
    ];
    let outcomes: Vec<_> = {
        let mut v = Vec::new();
        for (why, k) in &refused {
            let e = s.create_api_key(k).await.unwrap_err();
            let what = match e {
                StoreError::NotFound { kind, .. } => format!("not found: {kind}"),
                StoreError::Invalid(_) => "invalid".into(),
                StoreError::Conflict(_) => "conflict".into(),
                StoreError::Db(e) => format!("db: {e}"),
            };
            v.push((*why, what));
        }
        v
    };
    assert_eq!(
        outcomes,
        [
            ("unknown model in the allow-list", "not found: model".into()),
            ("unknown tenant", "not found: tenant".into()),
            ("empty allow-list", "invalid".into()),
            ("limit 0", "invalid".into()),
            ("same id", "conflict".into()),
        ]
    );

    let revoked = s.revoke_api_key("k1", "admin-alice").await.unwrap();
    assert!(revoked.revoked());
    assert_eq!(revoked.revoked_by.as_deref(), Some("admin-alice"));
    assert!(matches!(
        s.revoke_api_key("k1", "admin-bob").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.revoke_api_key("nope", "admin-bob").await,
        Err(StoreError::NotFound {
            kind: "api key",
            ..
        })
    ));
    let keys = s.list_api_keys().await.unwrap();
    let listed: Vec<_> = keys
        .iter()
        .map(|k| (k.id.as_str(), k.revoked(), k.revoked_by.as_deref()))
        .collect();
    assert_eq!(
        listed.len(),
        2,
        "revoked keys stay listed, refused ones are absent"
    );
    assert!(
        listed.contains(&("k1", true, Some("admin-alice"))),
        "{listed:?}"
    );
    assert!(listed.contains(&("k2", false, None)), "{listed:?}");
    assert_eq!(
        keys.iter().find(|k| k.id == "k1").unwrap().revoked_at,
        revoked.revoked_at,
        "the second revocation changed nothing"
    );
}

#[tokio::test]
async fn gateways_rotate_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let a = s.create_gateway("gw-b", "h1").await.unwrap();
    assert_eq!((a.name.as_str(), a.rotated_at), ("gw-b", None));
    s.create_gateway("gw-a", "h2").await.unwrap();
    assert!(matches!(
        s.create_gateway("gw-a", "h9").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_gateway("bad gw", "h8").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.gateway_by_token("h1").await.unwrap().as_deref(),
        Some("gw-b")
    );

    let rotated = s.rotate_gateway("gw-b", "h3").await.unwrap();
    assert!(rotated.rotated_at.is_some());
    assert_eq!(rotated.created_at, a.created_at);
    assert_eq!(
        s.gateway_by_token("h1").await.unwrap(),
        None,
        "old token dead"
    );
    assert_eq!(
        s.gateway_by_token("h3").await.unwrap().as_deref(),
        Some("gw-b")
    );
    assert!(matches!(
        s.rotate_gateway("gw-z", "h4").await,
        Err(StoreError::NotFound {
            kind: "gateway",
            ..
        })
    ));
    let names: Vec<_> = s
        .list_gateways()
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.name, g.rotated_at.is_some()))
        .collect();
    assert_eq!(names, [("gw-a".into(), false), ("gw-b".into(), true)]);
}

// === prices, top-ups, ledger ===

#[tokio::test]
async fn prices_are_versioned_with_tenant_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    let p1 = s
        .add_price(&list_price("smol", "0.10", "0.40", 0))
        .await
        .unwrap();
    let p2 = s
        .add_price(&NewPrice {
            tenant: Some("acme".into()),
            ..list_price("smol", "0.05", "0.20", 0)
        })
        .await
        .unwrap();
    let p3 = s
        .add_price(&list_price("smol", "0.12", "0.48", 1000))
        .await
        .unwrap();
    assert!(p1.version < p2.version && p2.version < p3.version);
    assert_eq!(
        (p1.tenant.as_deref(), p2.tenant.as_deref()),
        (None, Some("acme"))
    );
    assert_eq!(s.list_prices().await.unwrap(), [p1, p2, p3.clone()]);

    let bad = [
        (
            "negative input",
            list_price("smol", "-0.01", "0.40", 0),
            "invalid",
        ),
        (
            "negative output",
            list_price("smol", "0.10", "-1", 0),
            "invalid",
        ),
        (
            "other currency",
            NewPrice {
                currency: "EUR".into(),
                ..list_price("smol", "1", "1", 0)
            },
            "invalid",
        ),
        ("unknown model", list_price("gpt-9", "1", "1", 0), "model"),
        (
            "unknown tenant",
            NewPrice {
                tenant: Some("ghost".into()),
                ..list_price("smol", "1", "1", 0)
            },
            "tenant",
        ),
    ];
    for (why, p, want) in bad {
        match s.add_price(&p).await {
            Err(StoreError::Invalid(_)) => assert_eq!(want, "invalid", "{why}"),
            Err(StoreError::NotFound { kind, .. }) => assert_eq!(kind, want, "{why}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    // A free model is fine.
    let free = s.add_price(&list_price("big", "0", "0", 0)).await.unwrap();
    assert!(free.version > p3.version);
    assert_eq!(s.list_prices().await.unwrap().len(), 4);
}

#[tokio::test]
async fn top_ups_credit_once_per_reference() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    for (amount, reference) in [("0", "r0"), ("-5", "r1"), ("10", ""), ("10", "   ")] {
        assert!(
            matches!(
                s.top_up("acme", d(amount), reference).await,
                Err(StoreError::Invalid(_))
            ),
            "{amount} {reference:?}"
        );
    }
    assert!(matches!(
        s.top_up("ghost", d("1"), "r").await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
    let e = s.top_up("acme", d("10.50"), "inv-1").await.unwrap();
    assert_eq!(
        (e.kind, e.amount, e.balance, e.source.as_str()),
        (LedgerKind::TopUp, d("10.50"), d("10.50"), "inv-1")
    );
    assert!(matches!(
        s.top_up("acme", d("10.50"), "inv-1").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_tenant("acme").await.unwrap().balance, d("10.50"));
    assert_eq!(s.ledger("acme").await.unwrap(), std::slice::from_ref(&e));
    // References are per tenant.
    s.top_up("beta", d("1"), "inv-1").await.unwrap();
    let e2 = s.top_up("acme", d("0.0000001"), "inv-2").await.unwrap();
    assert_eq!(e2.balance, d("10.5000001"));
    assert_eq!(s.ledger("acme").await.unwrap(), [e, e2]);
    assert!(matches!(
        s.ledger("ghost").await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
}

// === usage ingest ===

#[tokio::test]
async fn ingest_is_idempotent_and_the_ledger_adds_up_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.create_api_key(&key("k1", "acme")).await.unwrap();
    let v = s
        .add_price(&list_price("smol", "0.10", "0.40", 0))
        .await
        .unwrap()
        .version;
    let p = Some((v, price("0.10", "0.40")));
    s.top_up("acme", d("5"), "inv-1").await.unwrap();

    let ev = |i: u32, at_ms: i64| {
        rated(
            &Use {
                id: &format!("e{i}"),
                tenant: "acme",
                key: "k1",
                model: "smol",
                at_ms,
                prompt: 37,
                completion: 8,
            },
            p,
        )
    };
    assert_eq!(ev(0, 0).cost, d("0.0000069"));
    let first = [ev(1, 100), ev(2, 200), ev(3, 300)];
    let overlapping = [ev(3, 300), ev(4, 400), ev(2, 200), ev(5, 50)];
    // (batch, gateway, receipt, balance after, ledger entries after)
    let steps: [(&[RatedEvent], &str, IngestReceipt, &str, usize); 4] = [
        (&first, "gw-a", receipt(3, 0), "4.9999793", 2),
        (&first, "gw-a", receipt(0, 3), "4.9999793", 2),
        // The same events from another gateway (a failover replaying a spool) are still
        // duplicates.
        (&first, "gw-b", receipt(0, 3), "4.9999793", 2),
        (&overlapping, "gw-b", receipt(2, 2), "4.9999655", 3),
    ];
    for (i, (batch, gw, want, balance, entries)) in steps.into_iter().enumerate() {
        assert_eq!(s.ingest_usage(gw, batch).await.unwrap(), want, "step {i}");
        assert_eq!(
            s.get_tenant("acme").await.unwrap().balance,
            d(balance),
            "step {i}"
        );
        assert_eq!(s.ledger("acme").await.unwrap().len(), entries, "step {i}");
    }
    // A batch repeating one event inside itself counts it once.
    assert_eq!(
        s.ingest_usage("gw-a", &[ev(6, 600), ev(6, 600)])
            .await
            .unwrap(),
        receipt(1, 1)
    );

    let ledger = s.ledger("acme").await.unwrap();
    let kinds: Vec<_> = ledger.iter().map(|e| (e.kind, e.amount)).collect();
    assert_eq!(
        kinds,
        [
            (LedgerKind::TopUp, d("5")),
            (LedgerKind::Usage, d("-0.0000207")),
            (LedgerKind::Usage, d("-0.0000138")),
            (LedgerKind::Usage, d("-0.0000069")),
        ]
    );
    assert_eq!(
        ledger[1].source,
        "usage batch from gateway gw-a: 3 events, 111 prompt + 24 completion tokens"
    );
    // Every entry's balance is the running sum; the last is the tenant's balance, which is
    // the top-ups minus 6 events' cost, exactly.
    let mut running = Decimal::ZERO;
    for e in &ledger {
        running += e.amount;
        assert_eq!(e.balance, running, "entry {}", e.id);
    }
    assert_eq!(running, d("5") - d("0.0000069") * Decimal::from(6));
    assert_eq!(s.get_tenant("acme").await.unwrap().balance, running);
}

#[tokio::test]
async fn ingest_edge_cases_free_usage_deleted_tenants_and_last_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.create_api_key(&key("k1", "beta")).await.unwrap();
    s.create_api_key(&key("k2", "beta")).await.unwrap();
    let use_ = |id: &'static str, tenant: &'static str, key: &'static str, at_ms| Use {
        id,
        tenant,
        key,
        model: "big",
        at_ms,
        prompt: 10,
        completion: 10,
    };
    // No price: stored, counted, no ledger entry, no balance change. An unknown tenant's
    // events are stored too.
    let batch = [
        rated(&use_("a", "beta", "k1", 2000), None),
        rated(&use_("b", "beta", "k1", 1500), None),
        rated(&use_("c", "gone", "k-gone", 10), None),
    ];
    assert_eq!(s.ingest_usage("gw", &batch).await.unwrap(), receipt(3, 0));
    assert!(s.ledger("beta").await.unwrap().is_empty());
    assert_eq!(s.get_tenant("beta").await.unwrap().balance, Decimal::ZERO);

    // Last use is the latest start among ingested events, and never moves back when an older
    // batch arrives late.
    let last_used = |keys: Vec<wattmesh_store::ApiKeyRecord>| -> Vec<(String, Option<i64>)> {
        keys.into_iter().map(|k| (k.id, k.last_used_ms)).collect()
    };
    let steps: [(&str, i64, [Option<i64>; 2]); 3] = [
        ("d", 1000, [Some(2000), None]),
        ("e", 3000, [Some(3000), None]),
        ("f", 2500, [Some(3000), None]),
    ];
    for (id, at, want) in steps {
        s.ingest_usage("gw", &[rated(&use_(id, "beta", "k1", at), None)])
            .await
            .unwrap();
        let mut got = last_used(s.list_api_keys().await.unwrap());
        got.sort();
        assert_eq!(
            got,
            [("k1".into(), want[0]), ("k2".into(), want[1])],
            "after {id} at {at}"
        );
    }

    // A pay-as-you-go tenant is debited into the negative.
    let v = s
        .add_price(&list_price("big", "1", "1", 0))
        .await
        .unwrap()
        .version;
    s.ingest_usage(
        "gw",
        &[rated(
            &use_("g", "beta", "k2", 5),
            Some((v, price("1", "1"))),
        )],
    )
    .await
    .unwrap();
    assert_eq!(s.get_tenant("beta").await.unwrap().balance, d("-0.00002"));
    let keys = last_used(s.list_api_keys().await.unwrap());
    assert!(keys.contains(&("k2".into(), Some(5))), "{keys:?}");

    // A negative cost fails the whole batch, and nothing of it is stored.
    let mut bad = rated(&use_("h", "beta", "k1", 9000), None);
    bad.cost = d("-1");
    let batch = [rated(&use_("i", "beta", "k1", 9000), None), bad];
    assert!(matches!(
        s.ingest_usage("gw", &batch).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.ingest_usage("gw", &batch[..1]).await.unwrap(),
        receipt(1, 0),
        "the failed batch left nothing behind"
    );
}

#[tokio::test]
async fn a_big_batch_is_one_quick_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.create_api_key(&key("k1", "acme")).await.unwrap();
    let v = s
        .add_price(&list_price("smol", "0.10", "0.40", 0))
        .await
        .unwrap()
        .version;
    let ids: Vec<String> = (0..2000).map(|i| format!("big-{i}")).collect();
    let batch: Vec<RatedEvent> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let at_ms = i64::try_from(i).unwrap();
            rated(
                &Use {
                    id,
                    tenant: "acme",
                    key: "k1",
                    model: "smol",
                    at_ms,
                    prompt: 37,
                    completion: 8,
                },
                Some((v, price("0.10", "0.40"))),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(
        s.ingest_usage("gw", &batch).await.unwrap(),
        receipt(2000, 0)
    );
    let took = started.elapsed();
    assert_eq!(
        s.ingest_usage("gw", &batch).await.unwrap(),
        receipt(0, 2000)
    );
    // Generous: a debug build on a loaded CI machine; a per-event transaction would take
    // seconds.
    assert!(took.as_secs() < 5, "2000 events took {took:?}");
    let ledger = s.ledger("acme").await.unwrap();
    assert_eq!(ledger.len(), 1, "one entry per tenant per batch");
    assert_eq!(ledger[0].amount, -(d("0.0000069") * Decimal::from(2000)));
}

// === usage reports ===

#[tokio::test]
async fn usage_totals_group_and_bucket_with_exact_costs() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    let v1 = s
        .add_price(&list_price("smol", "0.10", "0.40", 0))
        .await
        .unwrap()
        .version;
    let v2 = s
        .add_price(&list_price("smol", "0.13", "0.70", 150))
        .await
        .unwrap()
        .version;
    let v3 = s
        .add_price(&list_price("big", "3", "15", 0))
        .await
        .unwrap()
        .version;
    let prices = [
        (v1, price("0.10", "0.40")),
        (v2, price("0.13", "0.70")),
        (v3, price("3", "15")),
    ];
    let u = |id, tenant, key, model, at_ms, prompt, completion| Use {
        id,
        tenant,
        key,
        model,
        at_ms,
        prompt,
        completion,
    };
    // (event, price index or none). Buckets of 100 ms from 0: [0,100) [100,200) [200,300).
    let events = [
        (u("1", "acme", "ka", "smol", 0, 37, 8), Some(0)),
        (u("2", "acme", "ka", "smol", 99, 1, 1), Some(0)),
        (u("3", "acme", "kb", "smol", 120, 1000, 3), Some(0)),
        (u("4", "acme", "kb", "smol", 160, 5, 7), Some(1)),
        (u("5", "acme", "ka", "big", 170, 11, 13), Some(2)),
        (u("6", "acme", "ka", "big", 250, 2, 0), None),
        (u("7", "beta", "kc", "smol", 10, 100, 100), Some(0)),
        (u("8", "acme", "ka", "smol", 300, 9, 9), Some(0)), // at to_ms: excluded
    ];
    let batch: Vec<_> = events
        .iter()
        .map(|(e, p)| rated(e, p.map(|i| prices[i])))
        .collect();
    s.ingest_usage("gw", &batch).await.unwrap();
    // What each event cost when rated, by id: the expected totals are sums of these.
    let cost = |ids: &[&str]| -> Decimal {
        batch
            .iter()
            .filter(|r| ids.contains(&r.event.id.as_str()))
            .map(|r| r.cost)
            .sum()
    };
    let total =
        |bucket: Option<i64>, group: Option<&str>, ids: &[&str], tokens: (u64, u64)| UsageTotal {
            bucket_start_ms: bucket,
            group: group.map(str::to_owned),
            requests: ids.len() as u64,
            prompt_tokens: tokens.0,
            completion_tokens: tokens.1,
            cost: cost(ids),
        };
    let q = |tenant: Option<&str>, bucket_ms, group| UsageQuery {
        models: None,
        tenant: tenant.map(str::to_owned),
        from_ms: 0,
        to_ms: 300,
        bucket_ms,
        group,
    };
    let cases = [
        (
            "acme, no grouping",
            q(Some("acme"), None, UsageGroup::None),
            vec![total(
                None,
                None,
                &["1", "2", "3", "4", "5", "6"],
                (1056, 32),
            )],
        ),
        (
            "everyone, by model",
            q(None, None, UsageGroup::Model),
            vec![
                total(None, Some("big"), &["5", "6"], (13, 13)),
                total(None, Some("smol"), &["1", "2", "3", "4", "7"], (1143, 119)),
            ],
        ),
        (
            "everyone, by region and priority class",
            q(None, None, UsageGroup::RegionAndPriority),
            vec![total(
                None,
                Some("us\u{1f}normal"),
                &["1", "2", "3", "4", "5", "6", "7"],
                (1156, 132),
            )],
        ),
        (
            "acme, by key, 100 ms buckets",
            q(Some("acme"), Some(100), UsageGroup::Key),
            vec![
                total(Some(0), Some("ka"), &["1", "2"], (38, 9)),
                total(Some(100), Some("ka"), &["5"], (11, 13)),
                total(Some(100), Some("kb"), &["3", "4"], (1005, 10)),
                total(Some(200), Some("ka"), &["6"], (2, 0)),
            ],
        ),
        (
            "acme, by model, 150 ms buckets starting at 50",
            UsageQuery {
                from_ms: 50,
                ..q(Some("acme"), Some(150), UsageGroup::Model)
            },
            vec![
                total(Some(50), Some("big"), &["5"], (11, 13)),
                // Two price versions in one cell.
                total(Some(50), Some("smol"), &["2", "3", "4"], (1006, 11)),
                total(Some(200), Some("big"), &["6"], (2, 0)),
            ],
        ),
        (
            "nobody's usage",
            q(Some("ghost"), Some(100), UsageGroup::Model),
            vec![],
        ),
    ];
    for (why, query, want) in cases {
        assert_eq!(s.usage_totals(&query).await.unwrap(), want, "{why}");
    }
    // The no-grouping total equals the sum of the stored per-event costs, to the last digit.
    let all = s
        .usage_totals(&q(Some("acme"), None, UsageGroup::None))
        .await
        .unwrap();
    assert_eq!(all[0].cost, cost(&["1", "2", "3", "4", "5", "6"]));
    assert_ne!(all[0].cost, Decimal::ZERO);

    for bad in [
        q(None, Some(0), UsageGroup::None),
        UsageQuery {
            from_ms: 10,
            to_ms: 5,
            ..q(None, None, UsageGroup::None)
        },
    ] {
        assert!(
            matches!(s.usage_totals(&bad).await, Err(StoreError::Invalid(_))),
            "{bad:?}"
        );
    }
}

// === credit leases ===

#[tokio::test]
async fn leases_never_grant_more_than_is_free_across_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    s.create_api_key(&key("k1", "acme")).await.unwrap();
    // 1 per million prompt tokens: a request of 10 M prompt tokens costs 10.
    let v = s
        .add_price(&list_price("smol", "1", "0", 0))
        .await
        .unwrap()
        .version;
    let mut next_id = 0;
    let mut spend = |amount: u64| {
        next_id += 1;
        rated(
            &Use {
                id: &format!("e{next_id}"),
                tenant: "acme",
                key: "k1",
                model: "smol",
                at_ms: next_id,
                prompt: amount * 1_000_000,
                completion: 0,
            },
            Some((v, price("1", "0"))),
        )
    };

    enum Step {
        TopUp(&'static str, &'static str),
        Lease(&'static str, &'static str, (&'static str, &'static str)),
        Spend(&'static str, u64),
    }
    use Step::*;
    let steps = [
        TopUp("100", "inv-1"),
        // A quarter of what is free when that covers the need.
        Lease("gw-a", "1", ("25", "0")),
        // All that is free (75) when the need is larger.
        Lease("gw-b", "80", ("75", "0")),
        // Nothing is free: everything is held.
        Lease("gw-a", "1", ("25", "0")),
        // Spending what it holds frees nothing: the balance drops by as much.
        Spend("gw-a", 10),
        Lease("gw-a", "1", ("25", "10")),
        TopUp("40", "inv-2"),
        Lease("gw-a", "1", ("35", "10")),
        // gw-b overspends by 5: it holds 0 then, not -5.
        Spend("gw-b", 80),
        Lease("gw-b", "30", ("100", "80")),
        // Only 5 is left free (balance 50, held 25 + 20).
        Lease("gw-b", "30", ("105", "80")),
        Lease("gw-a", "30", ("35", "10")),
    ];
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            TopUp(amount, reference) => {
                s.top_up("acme", d(amount), reference).await.unwrap();
            }
            Spend(gw, amount) => {
                s.ingest_usage(gw, &[spend(amount)]).await.unwrap();
            }
            Lease(gw, need, (granted, spent)) => {
                let g = s
                    .lease_credit(gw, "acme", d(need), lease_grant)
                    .await
                    .unwrap();
                assert_eq!(
                    (g.tenant.as_str(), g.granted_total, g.spent_total),
                    ("acme", d(granted), d(spent)),
                    "step {i}"
                );
            }
        }
        // The invariant: what gateways hold unspent never passes the balance.
        let balance = s.get_tenant("acme").await.unwrap().balance;
        let mut held = Decimal::ZERO;
        for gw in ["gw-a", "gw-b"] {
            let g = s
                .lease_credit(gw, "acme", Decimal::ZERO, |_| Decimal::ZERO)
                .await
                .unwrap();
            held += (g.granted_total - g.spent_total).max(Decimal::ZERO);
        }
        assert!(held <= balance, "step {i}: held {held} > balance {balance}");
    }
    assert_eq!(s.get_tenant("acme").await.unwrap().balance, d("50"));

    // A pay-as-you-go tenant's usage is tracked as spent with nothing granted; a tenant in
    // debt is granted nothing.
    s.create_api_key(&key("k2", "beta")).await.unwrap();
    let mut e = spend(3);
    e.event.tenant = "beta".into();
    e.event.key_id = "k2".into();
    s.ingest_usage("gw-a", &[e]).await.unwrap();
    let g = s
        .lease_credit("gw-a", "beta", d("1"), lease_grant)
        .await
        .unwrap();
    assert_eq!((g.granted_total, g.spent_total), (d("0"), d("3")));
    assert!(matches!(
        s.lease_credit("gw-a", "ghost", d("1"), lease_grant).await,
        Err(StoreError::NotFound { kind: "tenant", .. })
    ));
}

// === restarts ===

#[tokio::test]
async fn reopening_the_file_keeps_the_money() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    seed(&s).await;
    let limits = Limits {
        rpm: Some(7),
        ..Limits::default()
    };
    s.set_tenant_limits("acme", &limits).await.unwrap();
    s.create_api_key(&NewApiKey {
        models: Some(vec!["smol".into()]),
        priority: KeyPriority::Batch,
        ..key("k1", "acme")
    })
    .await
    .unwrap();
    s.create_api_key(&key("k2", "acme")).await.unwrap();
    s.revoke_api_key("k2", "ops").await.unwrap();
    s.create_gateway("gw", "h1").await.unwrap();
    let v = s
        .add_price(&list_price("smol", "0.10", "0.40", 0))
        .await
        .unwrap()
        .version;
    s.top_up("acme", d("3"), "inv-1").await.unwrap();
    let e = rated(
        &Use {
            id: "e1",
            tenant: "acme",
            key: "k1",
            model: "smol",
            at_ms: 42,
            prompt: 37,
            completion: 8,
        },
        Some((v, price("0.10", "0.40"))),
    );
    s.ingest_usage("gw", std::slice::from_ref(&e))
        .await
        .unwrap();
    // A quarter of the balance (2.9999931) exceeds the need.
    s.lease_credit("gw", "acme", d("0.1"), lease_grant)
        .await
        .unwrap();
    let before = (
        s.list_tenants().await.unwrap(),
        s.list_api_keys().await.unwrap(),
        s.list_gateways().await.unwrap(),
        s.list_prices().await.unwrap(),
        s.ledger("acme").await.unwrap(),
        s.list_models().await.unwrap(),
    );
    let totals_query = UsageQuery {
        models: None,
        tenant: None,
        from_ms: 0,
        to_ms: 1000,
        bucket_ms: None,
        group: UsageGroup::Key,
    };
    let totals = s.usage_totals(&totals_query).await.unwrap();
    s.close().await;
    drop(s);

    let s = open(dir.path()).await;
    let after = (
        s.list_tenants().await.unwrap(),
        s.list_api_keys().await.unwrap(),
        s.list_gateways().await.unwrap(),
        s.list_prices().await.unwrap(),
        s.ledger("acme").await.unwrap(),
        s.list_models().await.unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(after.5[0].context_tokens, 8192);
    assert_eq!(s.usage_totals(&totals_query).await.unwrap(), totals);
    assert_eq!(
        s.gateway_by_token("h1").await.unwrap().as_deref(),
        Some("gw")
    );
    assert_eq!(
        s.ingest_usage("gw", &[e]).await.unwrap(),
        receipt(0, 1),
        "event ids survive a restart"
    );
    assert!(matches!(
        s.top_up("acme", d("3"), "inv-1").await,
        Err(StoreError::Conflict(_))
    ));
    let g = s
        .lease_credit("gw", "acme", Decimal::ZERO, |_| Decimal::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (g.granted_total, g.spent_total),
        (d("0.749998275"), d("0.0000069"))
    );
}

#[tokio::test]
async fn keys_revoked_before_the_money_migration_stay_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wattmesh.db");
    // A database as 0001 left it, migrated by the same migrator the store embeds.
    let only_0001 = dir.path().join("migrations");
    std::fs::create_dir(&only_0001).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_initial.sql"),
        only_0001.join("0001_initial.sql"),
    )
    .unwrap();
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(only_0001.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(
            "INSERT INTO tenants (name, created_at) VALUES ('acme', '2024-01-01T00:00:00Z');
             INSERT INTO api_keys (id, tenant, prefix, secret_sha256, created_at, revoked) VALUES
                 ('old-revoked', 'acme', 'p', 'h1', '2024-01-02T00:00:00Z', TRUE),
                 ('old-active', 'acme', 'p', 'h2', '2024-01-03T00:00:00Z', FALSE);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let s = SqliteStore::open(&path).await.unwrap();
    let keys: Vec<_> = s
        .list_api_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.id.clone(), k.revoked(), k.priority, k.limits))
        .collect();
    assert_eq!(
        keys,
        [
            (
                "old-revoked".into(),
                true,
                KeyPriority::Interactive,
                Limits::default()
            ),
            (
                "old-active".into(),
                false,
                KeyPriority::Interactive,
                Limits::default()
            ),
        ]
    );
    let t = s.get_tenant("acme").await.unwrap();
    assert_eq!(
        (t.plan, t.balance),
        (BillingPlan::PayAsYouGo, Decimal::ZERO)
    );
}
