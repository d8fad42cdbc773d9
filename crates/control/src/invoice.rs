//! Invoices, computed (pure) from what the store summed: a tenant's token usage per model and
//! deployment for the month, and its dedicated deployments' replica time per hour priced at
//! the replica-hour price in force at each hour's start. Nothing is stored: an invoice of a
//! closed month always comes out the same, since usage is rated once, at ingest.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use wattmesh_domain::pricing::in_force;
use wattmesh_proto::billing::{
    CURRENCY, DedicatedPrice, Invoice, InvoiceLine, InvoiceStatus, LineKind,
};
use wattmesh_store::{ReplicaSeconds, UsageGroup, UsageTotal};

use crate::clock::format_ms;

const SECONDS_PER_HOUR: i64 = 3600;

/// What one month's invoice is made of.
pub(crate) struct InvoiceInputs<'a> {
    pub tenant: &'a str,
    pub period: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    pub now_ms: i64,
    /// Grouped by model and deployment (`model` U+001F `deployment`), no buckets.
    pub usage: &'a [UsageTotal],
    pub replica_seconds: &'a [ReplicaSeconds],
    pub dedicated_prices: &'a [DedicatedPrice],
}

pub(crate) fn invoice(inputs: &InvoiceInputs<'_>) -> Invoice {
    let mut lines: Vec<InvoiceLine> = inputs
        .usage
        .iter()
        .map(|u| {
            let (model, deployment) = UsageGroup::ModelAndDeployment.split(u.group.as_deref());
            InvoiceLine {
                kind: LineKind::Tokens,
                model,
                deployment: deployment.unwrap_or_default(),
                requests: u.requests,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                replica_hours: Decimal::ZERO,
                amount: u.cost,
            }
        })
        .collect();
    let mut held: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for r in inputs.replica_seconds {
        let hours = Decimal::from(r.seconds) / Decimal::from(SECONDS_PER_HOUR);
        let price = price_at(inputs.dedicated_prices, &r.deployment, r.hour_start_ms);
        let slot = held.entry(r.deployment.as_str()).or_default();
        slot.0 += hours;
        slot.1 += hours * price;
    }
    lines.extend(
        held.into_iter()
            .map(|(deployment, (hours, amount))| InvoiceLine {
                kind: LineKind::ReplicaHours,
                model: None,
                deployment: deployment.to_owned(),
                requests: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                replica_hours: hours,
                amount,
            }),
    );
    let total = lines.iter().map(|l| l.amount).sum();
    Invoice {
        tenant: inputs.tenant.to_owned(),
        period: inputs.period.to_owned(),
        from: format_ms(inputs.from_ms),
        to: format_ms(inputs.to_ms),
        status: if inputs.now_ms < inputs.to_ms {
            InvoiceStatus::Open
        } else {
            InvoiceStatus::Closed
        },
        currency: CURRENCY.to_owned(),
        lines,
        total,
    }
}

/// The price per replica-hour of `deployment` in force at `at_ms`; 0 when none was set.
fn price_at(prices: &[DedicatedPrice], deployment: &str, at_ms: i64) -> Decimal {
    in_force(
        prices.iter().filter(|p| p.deployment == deployment),
        at_ms,
        |p| (p.effective_from_ms, p.version),
    )
    .map_or(Decimal::ZERO, |p| p.per_replica_hour)
}

/// The replica time between `from_ms` and `to_ms`, cut at hour boundaries: (hour start,
/// milliseconds in that hour).
pub(crate) fn split_by_hour(from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
    const HOUR_MS: i64 = SECONDS_PER_HOUR * 1000;
    let mut out = Vec::new();
    let mut t = from_ms;
    while t < to_ms {
        let hour = t.div_euclid(HOUR_MS) * HOUR_MS;
        let end = (hour + HOUR_MS).min(to_ms);
        out.push((hour, end - t));
        t = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn time_is_cut_at_hours() {
        let h = 3_600_000;
        assert_eq!(split_by_hour(0, 10), vec![(0, 10)]);
        assert_eq!(split_by_hour(h - 5, h + 7), vec![(0, 5), (h, 7)]);
        assert_eq!(split_by_hour(h, 3 * h), vec![(h, h), (2 * h, h)]);
        assert_eq!(split_by_hour(5, 5), vec![]);
    }

    #[test]
    fn an_invoice_bills_tokens_and_replica_hours_at_the_price_of_each_hour() {
        let h = 3_600_000;
        let price = |version, from, p: &str| DedicatedPrice {
            version,
            deployment: "acme-chat".into(),
            per_replica_hour: d(p),
            currency: CURRENCY.into(),
            effective_from: String::new(),
            effective_from_ms: from,
        };
        let seconds = |hour: i64, s| ReplicaSeconds {
            deployment: "acme-chat".into(),
            tenant: "acme".into(),
            hour_start_ms: hour * h,
            seconds: s,
        };
        let usage = [UsageTotal {
            bucket_start_ms: None,
            group: Some("smol\u{1f}shared".into()),
            requests: 3,
            prompt_tokens: 30,
            completion_tokens: 9,
            cost: d("0.0000066"),
        }];
        let inv = invoice(&InvoiceInputs {
            tenant: "acme",
            period: "1970-01",
            from_ms: 0,
            to_ms: 31 * 24 * h,
            now_ms: 40 * 24 * h,
            usage: &usage,
            // Two replicas for hour 0; one for half of hour 1, after the price went up.
            replica_seconds: &[seconds(0, 7200), seconds(1, 1800)],
            dedicated_prices: &[price(1, 0, "1.20"), price(2, h, "2.00")],
        });
        assert_eq!(inv.status, InvoiceStatus::Closed);
        assert_eq!(inv.lines.len(), 2);
        assert_eq!(inv.lines[0].kind, LineKind::Tokens);
        assert_eq!(inv.lines[0].deployment, "shared");
        assert_eq!(inv.lines[1].kind, LineKind::ReplicaHours);
        assert_eq!(inv.lines[1].replica_hours, d("2.5"));
        assert_eq!(inv.lines[1].amount, d("3.40")); // 2 h × 1.20 + 0.5 h × 2.00
        assert_eq!(inv.total, d("3.4000066"));
    }
}
