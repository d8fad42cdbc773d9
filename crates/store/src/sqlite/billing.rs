//! Money: the versioned price book, tenants' ledgers (top-ups and rated usage), the usage events
//! gateways ship (idempotent by event id), and the credit leases gateways hold.
//!
//! Every write that moves money changes a balance together with the rows that explain it, in
//! one write transaction: a ledger always adds up to its tenant's balance, and a replayed batch
//! or a retried payment never counts twice. Amounts are stored as decimal TEXT and added here in
//! Rust, never with SQL `SUM`, which would add TEXT as floats.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use sqlx::{FromRow, SqliteConnection, SqlitePool};
use wattmesh_domain::pricing::{LeaseView, TokenPrice};
use wattmesh_proto::billing::{CURRENCY, LedgerEntry, LedgerKind, Price};
use wattmesh_proto::usage::{IngestReceipt, LeaseGrant};

use super::fleet::exists;
use super::{begin_write, from_i64, now, parse_decimal, to_i64};
use crate::StoreError;
use crate::records::{NewPrice, RatedEvent, UsageGroup, UsageQuery, UsageTotal};

/// Longest top-up reference (an invoice or payment id).
const MAX_REFERENCE_LEN: usize = 256;

fn checked_add(what: &str, a: Decimal, b: Decimal) -> Result<Decimal, StoreError> {
    a.checked_add(b)
        .ok_or_else(|| StoreError::Invalid(format!("{what} overflows: {a} + {b}")))
}

#[derive(FromRow)]
struct PriceRow {
    version: i64,
    model: String,
    tenant: String,
    input_per_1m: String,
    output_per_1m: String,
    currency: String,
    effective_from: String,
    effective_from_ms: i64,
}

impl TryFrom<PriceRow> for Price {
    type Error = StoreError;
    fn try_from(r: PriceRow) -> Result<Self, StoreError> {
        Ok(Price {
            version: from_i64("price version", r.version)?,
            model: r.model,
            // '' is the list price: the column is NOT NULL so (model, tenant) indexes cleanly.
            tenant: (!r.tenant.is_empty()).then_some(r.tenant),
            input_per_1m: parse_decimal("input price", &r.input_per_1m)?,
            output_per_1m: parse_decimal("output price", &r.output_per_1m)?,
            currency: r.currency,
            effective_from: r.effective_from,
            effective_from_ms: r.effective_from_ms,
        })
    }
}

const PRICE_COLUMNS: &str = "SELECT version, model, tenant, input_per_1m, output_per_1m, \
                             currency, effective_from, effective_from_ms FROM prices";

#[derive(FromRow)]
struct LedgerRow {
    id: i64,
    tenant: String,
    kind: String,
    amount: String,
    balance: String,
    source: String,
    created_at: String,
}

impl TryFrom<LedgerRow> for LedgerEntry {
    type Error = StoreError;
    fn try_from(r: LedgerRow) -> Result<Self, StoreError> {
        Ok(LedgerEntry {
            id: from_i64("ledger id", r.id)?,
            kind: LedgerKind::parse(&r.kind)
                .ok_or_else(|| StoreError::Invalid(format!("stored ledger kind {:?}", r.kind)))?,
            amount: parse_decimal("ledger amount", &r.amount)?,
            balance: parse_decimal("ledger balance", &r.balance)?,
            tenant: r.tenant,
            source: r.source,
            created_at: r.created_at,
        })
    }
}

const LEDGER_COLUMNS: &str =
    "SELECT id, tenant, kind, amount, balance, source, created_at FROM ledger";

// --- prices ---

/// What every price must be: no amount below 0, and in [`CURRENCY`]. Ledgers and balances
/// carry no currency of their own: a price in another one would be added to them as if it
/// were the same money.
pub(super) fn check_price(
    what: &str,
    amounts: &[Decimal],
    currency: &str,
) -> Result<(), StoreError> {
    if let Some(negative) = amounts.iter().find(|a| a.is_sign_negative()) {
        return Err(StoreError::Invalid(format!(
            "{what} must be at least 0, not {negative}"
        )));
    }
    if currency != CURRENCY {
        return Err(StoreError::Invalid(format!(
            "prices are kept in {CURRENCY}, not {currency:?}"
        )));
    }
    Ok(())
}

pub(super) async fn add_price(pool: &SqlitePool, price: &NewPrice) -> Result<Price, StoreError> {
    check_price(
        "a token price",
        &[price.input_per_1m, price.output_per_1m],
        &price.currency,
    )?;
    let mut tx = begin_write(pool).await?;
    if !exists(&mut tx, "SELECT 1 FROM models WHERE name = ?", &price.model).await? {
        return Err(StoreError::not_found("model", &price.model));
    }
    // `prices.tenant` has no foreign key ('' stands for everyone), so the reference is checked
    // here.
    if let Some(tenant) = &price.tenant
        && !exists(&mut tx, "SELECT 1 FROM tenants WHERE name = ?", tenant).await?
    {
        return Err(StoreError::not_found("tenant", tenant));
    }
    let done = sqlx::query(
        "INSERT INTO prices (model, tenant, input_per_1m, output_per_1m, currency, \
         effective_from, effective_from_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&price.model)
    .bind(price.tenant.as_deref().unwrap_or(""))
    .bind(price.input_per_1m.to_string())
    .bind(price.output_per_1m.to_string())
    .bind(&price.currency)
    .bind(&price.effective_from)
    .bind(price.effective_from_ms)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Price {
        version: from_i64("price version", done.last_insert_rowid())?,
        model: price.model.clone(),
        tenant: price.tenant.clone(),
        input_per_1m: price.input_per_1m,
        output_per_1m: price.output_per_1m,
        currency: price.currency.clone(),
        effective_from: price.effective_from.clone(),
        effective_from_ms: price.effective_from_ms,
    })
}

pub(super) async fn list_prices(pool: &SqlitePool) -> Result<Vec<Price>, StoreError> {
    let rows: Vec<PriceRow> = sqlx::query_as(&format!("{PRICE_COLUMNS} ORDER BY version"))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(Price::try_from).collect()
}

// --- balances and the ledger ---

/// The tenant's balance, or `None` if there is no such tenant.
async fn balance(conn: &mut SqliteConnection, tenant: &str) -> Result<Option<Decimal>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT balance FROM tenants WHERE name = ?")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|(b,)| parse_decimal("balance", &b)).transpose()
}

/// One entry that moves a tenant's balance by `amount` to `balance`.
struct Entry<'a> {
    tenant: &'a str,
    kind: LedgerKind,
    amount: Decimal,
    balance: Decimal,
    source: &'a str,
    at: &'a str,
}

/// Writes the entry and the tenant's new balance; the caller's transaction makes the two one
/// change. Returns the entry's id. Errors are sqlx's own so a caller can tell a unique
/// violation (a used top-up reference) from the rest.
async fn post(conn: &mut SqliteConnection, e: &Entry<'_>) -> Result<i64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO ledger (tenant, kind, amount, balance, source, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(e.tenant)
    .bind(e.kind.as_str())
    .bind(e.amount.to_string())
    .bind(e.balance.to_string())
    .bind(e.source)
    .bind(e.at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE tenants SET balance = ? WHERE name = ?")
        .bind(e.balance.to_string())
        .bind(e.tenant)
        .execute(&mut *conn)
        .await?;
    Ok(done.last_insert_rowid())
}

pub(super) async fn top_up(
    pool: &SqlitePool,
    tenant: &str,
    amount: Decimal,
    reference: &str,
) -> Result<LedgerEntry, StoreError> {
    if amount <= Decimal::ZERO {
        return Err(StoreError::Invalid(format!(
            "a top-up must be positive, not {amount}"
        )));
    }
    // The reference is what makes a retried top-up a conflict; an empty one would make every
    // second top-up without a reference fail instead.
    if reference.trim().is_empty() || reference.len() > MAX_REFERENCE_LEN {
        return Err(StoreError::Invalid(format!(
            "a top-up reference has 1 to {MAX_REFERENCE_LEN} bytes"
        )));
    }
    let mut tx = begin_write(pool).await?;
    let before = balance(&mut tx, tenant)
        .await?
        .ok_or_else(|| StoreError::not_found("tenant", tenant))?;
    let at = now();
    let entry = Entry {
        tenant,
        kind: LedgerKind::TopUp,
        amount,
        balance: checked_add("balance", before, amount)?,
        source: reference,
        at: &at,
    };
    let id = post(&mut tx, &entry).await.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(format!(
            "top-up reference {reference:?} of tenant {tenant:?} was used before"
        )),
        _ => StoreError::Db(e),
    })?;
    tx.commit().await?;
    Ok(LedgerEntry {
        id: from_i64("ledger id", id)?,
        tenant: tenant.to_owned(),
        kind: entry.kind,
        amount,
        balance: entry.balance,
        source: reference.to_owned(),
        created_at: at,
    })
}

pub(super) async fn ledger(
    pool: &SqlitePool,
    tenant: &str,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let mut conn = pool.acquire().await?;
    if !exists(&mut conn, "SELECT 1 FROM tenants WHERE name = ?", tenant).await? {
        return Err(StoreError::not_found("tenant", tenant));
    }
    let rows: Vec<LedgerRow> =
        sqlx::query_as(&format!("{LEDGER_COLUMNS} WHERE tenant = ? ORDER BY id"))
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    rows.into_iter().map(LedgerEntry::try_from).collect()
}

// --- usage ---

/// What one batch's new events add up to for one tenant.
#[derive(Default)]
struct TenantUsage {
    events: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost: Decimal,
}

const INSERT_EVENT: &str = "INSERT INTO usage_events (id, request_id, gateway, tenant, key_id, \
     model, deployment, replica, site, region, priority, prompt_tokens, completion_tokens, \
     started_at_ms, ttft_ms, duration_ms, status, outcome, price_version, cost, ingested_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (id) DO NOTHING";

/// Inserts the event unless its id is known; returns whether it was new.
async fn insert_event(
    conn: &mut SqliteConnection,
    gateway: &str,
    rated: &RatedEvent,
    at: &str,
) -> Result<bool, StoreError> {
    let e = &rated.event;
    let ttft_ms = e.ttft_ms.map(|v| to_i64("ttft_ms", v)).transpose()?;
    let price_version = rated
        .price_version
        .map(|v| to_i64("price version", v))
        .transpose()?;
    // The same text for every event: sqlx keeps the statement prepared on the connection, so
    // a batch of thousands pays for parsing once.
    let done = sqlx::query(INSERT_EVENT)
        .bind(&e.id)
        .bind(&e.request_id)
        .bind(gateway)
        .bind(&e.tenant)
        .bind(&e.key_id)
        .bind(&e.model)
        .bind(&e.deployment)
        .bind(&e.replica)
        .bind(&e.site)
        .bind(&e.region)
        .bind(&e.priority)
        .bind(to_i64("prompt_tokens", e.prompt_tokens)?)
        .bind(to_i64("completion_tokens", e.completion_tokens)?)
        .bind(e.started_at_ms)
        .bind(ttft_ms)
        .bind(to_i64("duration_ms", e.duration_ms)?)
        .bind(i64::from(e.status))
        .bind(e.outcome.as_str())
        .bind(price_version)
        .bind(rated.cost.to_string())
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A lease row's totals, zero when the gateway holds none of the tenant's credit yet.
async fn lease_totals(
    conn: &mut SqliteConnection,
    gateway: &str,
    tenant: &str,
) -> Result<(Decimal, Decimal), StoreError> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT granted_total, spent_total FROM leases WHERE gateway = ? AND tenant = ?",
    )
    .bind(gateway)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok((Decimal::ZERO, Decimal::ZERO)),
        Some((granted, spent)) => Ok((
            parse_decimal("granted_total", &granted)?,
            parse_decimal("spent_total", &spent)?,
        )),
    }
}

async fn write_lease(
    conn: &mut SqliteConnection,
    gateway: &str,
    tenant: &str,
    (granted, spent): (Decimal, Decimal),
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO leases (gateway, tenant, granted_total, spent_total, updated_at) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (gateway, tenant) DO UPDATE SET \
         granted_total = excluded.granted_total, spent_total = excluded.spent_total, \
         updated_at = excluded.updated_at",
    )
    .bind(gateway)
    .bind(tenant)
    .bind(granted.to_string())
    .bind(spent.to_string())
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn ingest_usage(
    pool: &SqlitePool,
    gateway: &str,
    events: &[RatedEvent],
) -> Result<IngestReceipt, StoreError> {
    // Checked before anything is written: a negative cost would credit the tenant.
    if let Some(bad) = events.iter().find(|r| r.cost.is_sign_negative()) {
        return Err(StoreError::Invalid(format!(
            "usage event {:?} has a negative cost {}",
            bad.event.id, bad.cost
        )));
    }
    let at = now();
    let mut tx = begin_write(pool).await?;
    let mut accepted = 0u64;
    let mut duplicates = 0u64;
    // BTreeMaps: tenants are debited and keys touched in a fixed order, so two runs of the
    // same batch write the same rows in the same order.
    let mut usage: BTreeMap<&str, TenantUsage> = BTreeMap::new();
    let mut last_used: BTreeMap<&str, i64> = BTreeMap::new();
    for rated in events {
        if !insert_event(&mut tx, gateway, rated, &at).await? {
            duplicates += 1;
            continue;
        }
        accepted += 1;
        let e = &rated.event;
        let u = usage.entry(&e.tenant).or_default();
        u.events += 1;
        u.prompt_tokens = u.prompt_tokens.saturating_add(e.prompt_tokens);
        u.completion_tokens = u.completion_tokens.saturating_add(e.completion_tokens);
        u.cost = checked_add("a batch's cost", u.cost, rated.cost)?;
        last_used
            .entry(&e.key_id)
            .and_modify(|ms| *ms = (*ms).max(e.started_at_ms))
            .or_insert(e.started_at_ms);
    }

    for (tenant, u) in &usage {
        // Usage at cost 0 (no price set) moves no money: no ledger entry, so a ledger lists
        // only what changed the balance. The events themselves are stored all the same.
        if u.cost.is_zero() {
            continue;
        }
        // A deleted tenant's events are kept for the record and debited nowhere.
        let Some(before) = balance(&mut tx, tenant).await? else {
            continue;
        };
        let source = format!(
            "usage batch from gateway {gateway}: {} events, {} prompt + {} completion tokens",
            u.events, u.prompt_tokens, u.completion_tokens
        );
        let entry = Entry {
            tenant,
            kind: LedgerKind::Usage,
            amount: -u.cost,
            balance: before
                .checked_sub(u.cost)
                .ok_or_else(|| StoreError::Invalid(format!("balance overflows: {before}")))?,
            source: &source,
            at: &at,
        };
        post(&mut tx, &entry).await?;
        // Spent may pass granted (a pay-as-you-go tenant has no lease, a gateway may overspend
        // a little): what the gateway holds is then 0, never negative.
        let (granted, spent) = lease_totals(&mut tx, gateway, tenant).await?;
        let spent = checked_add("spent_total", spent, u.cost)?;
        write_lease(&mut tx, gateway, tenant, (granted, spent), &at).await?;
    }

    for (key, ms) in &last_used {
        // Batches arrive out of order: the last use only ever moves forward.
        sqlx::query(
            "UPDATE api_keys SET last_used_ms = ? \
             WHERE id = ? AND (last_used_ms IS NULL OR last_used_ms < ?)",
        )
        .bind(ms)
        .bind(key)
        .bind(ms)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(IngestReceipt {
        accepted,
        duplicates,
    })
}

/// One row of the grouped query: a bucket, a group, a price version and its sums.
type UsageSums = (Option<i64>, Option<String>, Option<i64>, i64, i64, i64);

pub(super) async fn usage_totals(
    pool: &SqlitePool,
    query: &UsageQuery,
) -> Result<Vec<UsageTotal>, StoreError> {
    if query.bucket_ms.is_some_and(|b| b <= 0) {
        return Err(StoreError::Invalid(
            "a usage bucket must be at least 1 ms".into(),
        ));
    }
    if query.to_ms < query.from_ms {
        return Err(StoreError::Invalid(format!(
            "usage range ends ({}) before it starts ({})",
            query.to_ms, query.from_ms
        )));
    }
    // Tokens are summed in SQL per price version (integers, exact); the cost is computed from
    // those sums in Rust. Cost is linear in tokens, so this equals the sum of the events'
    // stored costs, without reading one row per event.
    let bucket = if query.bucket_ms.is_some() {
        "(started_at_ms - ?) / ?"
    } else {
        "NULL"
    };
    let group = match query.group {
        UsageGroup::None => "NULL",
        UsageGroup::Model => "model",
        UsageGroup::Key => "key_id",
        // One text per pair (char(31) is `PAIR_SEPARATOR`), split by `UsageGroup::split`.
        UsageGroup::ModelAndKey => "model || char(31) || key_id",
        UsageGroup::ModelAndDeployment => "model || char(31) || deployment",
        UsageGroup::Site => "site",
        UsageGroup::Region => "region",
        UsageGroup::RegionAndPriority => "region || char(31) || priority",
    };
    let tenant = if query.tenant.is_some() {
        " AND tenant = ?"
    } else {
        ""
    };
    let models = match &query.models {
        None => String::new(),
        Some(m) if m.is_empty() => return Ok(Vec::new()),
        Some(m) => format!(" AND model IN ({})", vec!["?"; m.len()].join(", ")),
    };
    let sql = format!(
        "SELECT {bucket} AS bucket, {group} AS grp, price_version, COUNT(*), \
         SUM(prompt_tokens), SUM(completion_tokens) FROM usage_events \
         WHERE started_at_ms >= ? AND started_at_ms < ?{tenant}{models} \
         GROUP BY bucket, grp, price_version"
    );
    let mut q = sqlx::query_as::<_, UsageSums>(&sql);
    if let Some(b) = query.bucket_ms {
        q = q.bind(query.from_ms).bind(b);
    }
    q = q.bind(query.from_ms).bind(query.to_ms);
    if let Some(t) = &query.tenant {
        q = q.bind(t);
    }
    for m in query.models.iter().flatten() {
        q = q.bind(m);
    }
    let rows = q.fetch_all(pool).await?;

    // Read after the usage: prices are never deleted, so every version a row names is here.
    let prices: HashMap<i64, TokenPrice> = sqlx::query_as::<_, (i64, String, String)>(
        "SELECT version, input_per_1m, output_per_1m FROM prices",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(v, input, output)| {
        Ok((
            v,
            TokenPrice {
                input_per_1m: parse_decimal("input price", &input)?,
                output_per_1m: parse_decimal("output price", &output)?,
            },
        ))
    })
    .collect::<Result<_, StoreError>>()?;

    // Keyed by (bucket, group): merges the price versions of one cell and orders the result.
    let mut totals: BTreeMap<(Option<i64>, Option<String>), UsageTotal> = BTreeMap::new();
    for (index, group, version, requests, prompt, completion) in rows {
        let requests = from_i64("request count", requests)?;
        let prompt = from_i64("prompt_tokens", prompt)?;
        let completion = from_i64("completion_tokens", completion)?;
        let price = match version {
            None => TokenPrice::FREE,
            Some(v) => *prices
                .get(&v)
                .ok_or_else(|| StoreError::Invalid(format!("usage rated at unknown price {v}")))?,
        };
        let bucket_start_ms = match (index, query.bucket_ms) {
            (Some(i), Some(b)) => Some(
                i.checked_mul(b)
                    .and_then(|o| o.checked_add(query.from_ms))
                    .ok_or_else(|| StoreError::Invalid(format!("usage bucket {i} overflows")))?,
            ),
            _ => None,
        };
        let t = totals
            .entry((bucket_start_ms, group.clone()))
            .or_insert_with(|| UsageTotal {
                bucket_start_ms,
                group,
                requests: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost: Decimal::ZERO,
            });
        t.requests += requests;
        t.prompt_tokens += prompt;
        t.completion_tokens += completion;
        t.cost = checked_add("usage cost", t.cost, price.cost(prompt, completion))?;
    }
    Ok(totals.into_values().collect())
}

// --- leases ---

pub(super) async fn lease_credit(
    pool: &SqlitePool,
    gateway: &str,
    tenant: &str,
    need: Decimal,
    decide: fn(LeaseView) -> Decimal,
) -> Result<LeaseGrant, StoreError> {
    // One write transaction from the reads to the grant: two gateways asking at once are
    // served one after the other, so together they are never granted more than is free.
    let mut tx = begin_write(pool).await?;
    let balance = balance(&mut tx, tenant)
        .await?
        .ok_or_else(|| StoreError::not_found("tenant", tenant))?;
    let leases: Vec<(String, String, String)> =
        sqlx::query_as("SELECT gateway, granted_total, spent_total FROM leases WHERE tenant = ?")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
    let mut held = Decimal::ZERO;
    let mut mine = (Decimal::ZERO, Decimal::ZERO);
    for (gw, granted, spent) in leases {
        let granted = parse_decimal("granted_total", &granted)?;
        let spent = parse_decimal("spent_total", &spent)?;
        // Overspent credit was debited from the balance already; it is not held any more.
        let unspent = granted
            .checked_sub(spent)
            .unwrap_or(Decimal::ZERO)
            .max(Decimal::ZERO);
        held = checked_add("held credit", held, unspent)?;
        if gw == gateway {
            mine = (granted, spent);
        }
    }
    let grant = decide(LeaseView {
        balance,
        held_by_gateways: held,
        need,
    });
    if grant > Decimal::ZERO {
        mine.0 = checked_add("granted_total", mine.0, grant)?;
        write_lease(&mut tx, gateway, tenant, mine, &now()).await?;
    }
    tx.commit().await?;
    Ok(LeaseGrant {
        tenant: tenant.to_owned(),
        granted_total: mine.0,
        spent_total: mine.1,
    })
}
