//! `wattmesh tenants`, `gateways`, `prices` and `usage`: the operator's side of the money path.

use anyhow::{Context, Result, bail};
use rust_decimal::Decimal;
use wattmesh_proto::api::{
    BillingPlan, Gateway, GatewayCreated, GatewaySpec, Limits, Tenant, TenantSpec, TopUp,
};
use wattmesh_proto::billing::{
    DedicatedPrice, DedicatedPriceSpec, Invoice, LedgerEntry, LineKind, Price, PriceSpec, UsageRow,
};

use crate::cli::{
    GatewaysCommand, InvoicesCommand, LimitArgs, PricesCommand, TenantsCommand, UsageArgs,
};
use crate::client::ControlClient;
use crate::commands::{print_json, table};

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            concurrency: self.concurrency,
        }
    }
}

fn limits_text(l: &Limits) -> String {
    let parts: Vec<String> = [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("concurrency", l.concurrency),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n}={v}")))
    .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}

fn decimal(what: &str, text: &str) -> Result<Decimal> {
    text.parse()
        .with_context(|| format!("{what} {text:?} is not a decimal number"))
}

pub async fn tenants(cmd: TenantsCommand) -> Result<()> {
    match cmd {
        TenantsCommand::Create {
            name,
            plan,
            contact,
            limits,
            target,
        } => {
            let plan = match plan.as_str() {
                "pay-as-you-go" | "pay_as_you_go" | "payg" => BillingPlan::PayAsYouGo,
                "prepaid" => BillingPlan::Prepaid,
                other => bail!("--plan {other:?}: use pay-as-you-go or prepaid"),
            };
            let spec = TenantSpec {
                name,
                plan,
                contact,
                limits: limits.limits(),
            };
            let t: Tenant = ControlClient::from_target(&target)?
                .post("/tenants", &spec)
                .await?;
            println!("created tenant {} ({})", t.name, t.plan.as_str());
        }
        TenantsCommand::List { json, target } => {
            let tenants: Vec<Tenant> = ControlClient::from_target(&target)?.get("/tenants").await?;
            if json {
                return print_json(&tenants);
            }
            let mut t = table(&["name", "plan", "balance", "limits", "contact"]);
            for x in tenants {
                t.add_row(vec![
                    x.name.clone(),
                    x.plan.as_str().to_owned(),
                    format!("{} {}", x.balance, x.currency),
                    limits_text(&x.limits),
                    x.contact.clone().unwrap_or_default(),
                ]);
            }
            println!("{t}");
        }
        TenantsCommand::Show { name, json, target } => {
            let client = ControlClient::from_target(&target)?;
            let tenant: Tenant = client.get(&format!("/tenants/{name}")).await?;
            let ledger: Vec<LedgerEntry> = client.get(&format!("/tenants/{name}/ledger")).await?;
            if json {
                return print_json(&serde_json::json!({"tenant": tenant, "ledger": ledger}));
            }
            println!("tenant   {}", tenant.name);
            println!("plan     {}", tenant.plan.as_str());
            println!("balance  {} {}", tenant.balance, tenant.currency);
            println!("limits   {}", limits_text(&tenant.limits));
            if let Some(c) = &tenant.contact {
                println!("contact  {c}");
            }
            let mut t = table(&["id", "when", "kind", "amount", "balance", "source"]);
            for e in ledger {
                t.add_row(vec![
                    e.id.to_string(),
                    e.created_at,
                    e.kind.as_str().to_owned(),
                    e.amount.to_string(),
                    e.balance.to_string(),
                    e.source,
                ]);
            }
            println!("\n{t}");
        }
        TenantsCommand::TopUp {
            name,
            amount,
            reference,
            target,
        } => {
            let top_up = TopUp {
                amount: decimal("amount", &amount)?,
                reference,
            };
            let e: LedgerEntry = ControlClient::from_target(&target)?
                .post(&format!("/tenants/{name}/top-ups"), &top_up)
                .await?;
            println!("credited {} to {name}; balance {}", e.amount, e.balance);
        }
        TenantsCommand::Limits {
            name,
            limits,
            target,
        } => {
            let t: Tenant = ControlClient::from_target(&target)?
                .put(&format!("/tenants/{name}/limits"), &limits.limits())
                .await?;
            println!("limits of {}: {}", t.name, limits_text(&t.limits));
        }
    }
    Ok(())
}

pub async fn gateways(cmd: GatewaysCommand) -> Result<()> {
    match cmd {
        GatewaysCommand::Create { name, target } => {
            let created: GatewayCreated = ControlClient::from_target(&target)?
                .post("/gateways", &GatewaySpec { name })
                .await?;
            eprintln!(
                "created gateway {}; its token is shown only now (run it with \
                 `wattmesh gateway --token ...`):",
                created.gateway.name
            );
            println!("{}", created.token);
        }
        GatewaysCommand::List { json, target } => {
            let gateways: Vec<Gateway> = ControlClient::from_target(&target)?
                .get("/gateways")
                .await?;
            if json {
                return print_json(&gateways);
            }
            let mut t = table(&["name", "created", "rotated"]);
            for g in gateways {
                t.add_row(vec![g.name, g.created_at, g.rotated_at.unwrap_or_default()]);
            }
            println!("{t}");
        }
        GatewaysCommand::Rotate { name, target } => {
            let created: GatewayCreated = ControlClient::from_target(&target)?
                .post(&format!("/gateways/{name}/rotate"), &serde_json::json!({}))
                .await?;
            eprintln!(
                "rotated the token of gateway {}; the old one no longer works:",
                created.gateway.name
            );
            println!("{}", created.token);
        }
    }
    Ok(())
}

pub async fn prices(cmd: PricesCommand) -> Result<()> {
    match cmd {
        PricesCommand::Set {
            model,
            input,
            output,
            tenant,
            from,
            target,
        } => {
            let spec = PriceSpec {
                model,
                tenant,
                input_per_1m: decimal("--input", &input)?,
                output_per_1m: decimal("--output", &output)?,
                effective_from: from,
            };
            let p: Price = ControlClient::from_target(&target)?
                .post("/prices", &spec)
                .await?;
            println!(
                "price v{} of {}{}: {} in / {} out per 1M tokens ({}), from {}",
                p.version,
                p.model,
                p.tenant
                    .as_deref()
                    .map(|t| format!(" for {t}"))
                    .unwrap_or_default(),
                p.input_per_1m,
                p.output_per_1m,
                p.currency,
                p.effective_from
            );
        }
        PricesCommand::SetDedicated {
            deployment,
            per_replica_hour,
            from,
            target,
        } => {
            let spec = DedicatedPriceSpec {
                deployment,
                per_replica_hour: decimal("--per-replica-hour", &per_replica_hour)?,
                effective_from: from,
            };
            let p: DedicatedPrice = ControlClient::from_target(&target)?
                .post("/prices/dedicated", &spec)
                .await?;
            println!(
                "price v{} of deployment {}: {} {} per replica-hour, from {}",
                p.version, p.deployment, p.per_replica_hour, p.currency, p.effective_from
            );
        }
        PricesCommand::List { json, target } => {
            let client = ControlClient::from_target(&target)?;
            let prices: Vec<Price> = client.get("/prices").await?;
            let dedicated: Vec<DedicatedPrice> = client.get("/prices/dedicated").await?;
            if json {
                return print_json(&serde_json::json!({"tokens": prices, "dedicated": dedicated}));
            }
            let mut t = table(&[
                "version",
                "model",
                "tenant",
                "input/1M",
                "output/1M",
                "from",
            ]);
            for p in prices {
                t.add_row(vec![
                    p.version.to_string(),
                    p.model,
                    p.tenant.unwrap_or_else(|| "(list)".into()),
                    format!("{} {}", p.input_per_1m, p.currency),
                    format!("{} {}", p.output_per_1m, p.currency),
                    p.effective_from,
                ]);
            }
            println!("{t}");
            if !dedicated.is_empty() {
                let mut t = table(&["version", "deployment", "per replica-hour", "from"]);
                for p in dedicated {
                    t.add_row(vec![
                        p.version.to_string(),
                        p.deployment,
                        format!("{} {}", p.per_replica_hour, p.currency),
                        p.effective_from,
                    ]);
                }
                println!("\n{t}");
            }
        }
    }
    Ok(())
}

pub async fn invoices(cmd: InvoicesCommand) -> Result<()> {
    match cmd {
        InvoicesCommand::List {
            tenant,
            json,
            target,
        } => {
            let list: Vec<Invoice> = ControlClient::from_target(&target)?
                .get(&format!("/tenants/{tenant}/invoices"))
                .await?;
            if json {
                return print_json(&list);
            }
            let mut t = table(&["period", "status", "lines", "total"]);
            for i in list {
                t.add_row(vec![
                    i.period,
                    format!("{:?}", i.status).to_lowercase(),
                    i.lines.len().to_string(),
                    format!("{} {}", i.total, i.currency),
                ]);
            }
            println!("{t}");
        }
        InvoicesCommand::Show {
            tenant,
            period,
            json,
            target,
        } => {
            let i: Invoice = ControlClient::from_target(&target)?
                .get(&format!("/tenants/{tenant}/invoices/{period}"))
                .await?;
            if json {
                return print_json(&i);
            }
            println!("invoice  {} {}", i.tenant, i.period);
            println!("period   {} to {}", i.from, i.to);
            println!("status   {}", format!("{:?}", i.status).to_lowercase());
            let mut t = table(&[
                "item",
                "deployment",
                "requests",
                "prompt",
                "completion",
                "replica-hours",
                "amount",
            ]);
            for l in &i.lines {
                let item = match l.kind {
                    LineKind::Tokens => l.model.clone().unwrap_or_default(),
                    LineKind::ReplicaHours => "replica-hours".to_owned(),
                };
                t.add_row(vec![
                    item,
                    l.deployment.clone(),
                    l.requests.to_string(),
                    l.prompt_tokens.to_string(),
                    l.completion_tokens.to_string(),
                    l.replica_hours.to_string(),
                    format!("{} {}", l.amount, i.currency),
                ]);
            }
            println!("\n{t}\n\ntotal    {} {}", i.total, i.currency);
        }
    }
    Ok(())
}

pub async fn usage(args: UsageArgs) -> Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("tenant", &args.tenant),
        ("from", &args.from),
        ("to", &args.to),
        ("group_by", &args.group_by),
    ] {
        if let Some(v) = value {
            query.push((name, v.clone()));
        }
    }
    let rows: Vec<UsageRow> = ControlClient::from_target(&args.target)?
        .get_query("/usage", &query)
        .await?;
    if args.json {
        return print_json(&rows);
    }
    let header = [
        "group",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "currency",
    ];
    if args.csv {
        println!("{}", header.join(","));
        for r in rows {
            println!(
                "{},{},{},{},{},{}",
                csv_field(&r.group),
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.cost,
                r.currency
            );
        }
        return Ok(());
    }
    let mut t = table(&header);
    for r in rows {
        t.add_row(vec![
            r.group,
            r.requests.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
            r.cost.to_string(),
            r.currency,
        ]);
    }
    println!("{t}");
    Ok(())
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
