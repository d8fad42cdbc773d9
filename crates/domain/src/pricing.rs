//! Rating usage and deciding credit: what a request costs at a price, what it may cost at
//! worst before it runs, which price version is in force, and how much of a tenant's credit a
//! gateway may hold. Money is [`Decimal`] throughout: exact, never a float.

use rust_decimal::Decimal;

/// Prices are per this many tokens.
const TOKENS_PER_PRICE_UNIT: u64 = 1_000_000;

/// A price per million prompt and completion tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPrice {
    pub input_per_1m: Decimal,
    pub output_per_1m: Decimal,
}

impl TokenPrice {
    pub const FREE: TokenPrice = TokenPrice {
        input_per_1m: Decimal::ZERO,
        output_per_1m: Decimal::ZERO,
    };

    /// The exact cost of `prompt` and `completion` tokens.
    pub fn cost(&self, prompt: u64, completion: u64) -> Decimal {
        (Decimal::from(prompt) * self.input_per_1m + Decimal::from(completion) * self.output_per_1m)
            / Decimal::from(TOKENS_PER_PRICE_UNIT)
    }
}

/// One version of a price, as the rater sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    pub version: u64,
    pub model: String,
    /// `None`: the list price.
    pub tenant: Option<String>,
    pub effective_from_ms: i64,
    pub price: TokenPrice,
}

/// The version in force at `at_ms` among `versions` of one price: the latest
/// `effective_from_ms` not after `at_ms`, the later version on a tie. `when` gives a version's
/// (effective_from_ms, version). Every versioned price (token prices, their overrides,
/// dedicated replica-hour prices) is chosen by this one rule.
pub fn in_force<'a, T: 'a>(
    versions: impl IntoIterator<Item = &'a T>,
    at_ms: i64,
    when: impl Fn(&T) -> (i64, u64),
) -> Option<&'a T> {
    versions
        .into_iter()
        .filter(|v| when(v).0 <= at_ms)
        .max_by_key(|v| when(v))
}

/// The price in force for `tenant` using `model` at `at_ms`: the tenant's own override if one
/// is in force, else the list price. `None` when no price is set: the usage is free.
pub fn price_at<'a>(
    prices: &'a [PriceVersion],
    model: &str,
    tenant: &str,
    at_ms: i64,
) -> Option<&'a PriceVersion> {
    let latest = |for_tenant: Option<&str>| {
        in_force(
            prices
                .iter()
                .filter(|p| p.model == model && p.tenant.as_deref() == for_tenant),
            at_ms,
            |p| (p.effective_from_ms, p.version),
        )
    };
    latest(Some(tenant)).or_else(|| latest(None))
}

/// The most a request can be billed before it runs, in tokens. Prompt tokens cannot outnumber
/// the bytes of the request body (every token of the prompt covers at least one byte of its
/// text, and the JSON around the text is longer than the chat template's own tokens), and no
/// request uses more than the model's context in all.
pub fn worst_case_tokens(
    body_bytes: u64,
    max_tokens: Option<u64>,
    context_tokens: u64,
) -> (u64, u64) {
    let prompt = body_bytes.min(context_tokens);
    let completion = max_tokens.unwrap_or(context_tokens).min(context_tokens);
    (prompt, completion)
}

/// What the control plane knows when a gateway asks for more of a tenant's credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseView {
    /// Credit bought minus usage ingested.
    pub balance: Decimal,
    /// Credit granted to gateways (this one included) and not yet used by ingested usage.
    pub held_by_gateways: Decimal,
    /// What the asking gateway lacks.
    pub need: Decimal,
}

/// How much more credit to grant. Never more than is free (balance minus what gateways hold),
/// so the sum of all gateways' spending cannot pass the balance. Grants a quarter of what is
/// free when that is more than the need, so a busy gateway asks rarely while other gateways
/// still find credit; all that is free when the need is larger (the caller refuses the request
/// if even that falls short).
pub fn lease_grant(view: LeaseView) -> Decimal {
    let free = view.balance - view.held_by_gateways;
    if free <= Decimal::ZERO || view.need < Decimal::ZERO {
        return Decimal::ZERO;
    }
    let slice = free / Decimal::from(4);
    view.need.max(slice).min(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn cost_is_exact() {
        let p = TokenPrice {
            input_per_1m: d("0.10"),
            output_per_1m: d("0.40"),
        };
        assert_eq!(p.cost(37, 8), d("0.0000069"));
        assert_eq!(p.cost(1_000_000, 1_000_000), d("0.50"));
        assert_eq!(p.cost(0, 0), Decimal::ZERO);
        // Ten million single-token requests add up exactly, with no drift.
        let one = p.cost(1, 0);
        let mut sum = Decimal::ZERO;
        for _ in 0..10_000 {
            sum += one;
        }
        assert_eq!(sum, p.cost(10_000, 0));
    }

    #[test]
    fn price_in_force_prefers_the_tenant_then_the_latest() {
        let v = |version, tenant: Option<&str>, from, input: &str| PriceVersion {
            version,
            model: "m".into(),
            tenant: tenant.map(str::to_owned),
            effective_from_ms: from,
            price: TokenPrice {
                input_per_1m: d(input),
                output_per_1m: d(input),
            },
        };
        let prices = [
            v(1, None, 0, "1"),
            v(2, None, 100, "2"),
            v(3, Some("acme"), 50, "0.5"),
            v(4, None, 100, "3"),
        ];
        let at = |tenant, t| price_at(&prices, "m", tenant, t).map(|p| p.version);
        let cases = [
            ("other", 10, Some(1)),
            ("other", 99, Some(1)),
            ("other", 100, Some(4)), // same start: the later version wins
            ("acme", 10, Some(1)),   // the override is not in force yet
            ("acme", 50, Some(3)),
            ("acme", 1000, Some(3)),
        ];
        for (tenant, t, want) in cases {
            assert_eq!(at(tenant, t), want, "{tenant} at {t}");
        }
        assert_eq!(price_at(&prices, "other-model", "acme", 1000), None);
        assert_eq!(price_at(&prices, "m", "acme", -1), None);
    }

    #[test]
    fn worst_case_is_bounded_by_the_context() {
        assert_eq!(worst_case_tokens(300, Some(16), 2048), (300, 16));
        assert_eq!(worst_case_tokens(300, None, 2048), (300, 2048));
        assert_eq!(
            worst_case_tokens(1 << 20, Some(1 << 30), 2048),
            (2048, 2048)
        );
    }

    #[test]
    fn leases_never_grant_more_than_is_free() {
        let g = |balance: &str, held: &str, need: &str| {
            lease_grant(LeaseView {
                balance: d(balance),
                held_by_gateways: d(held),
                need: d(need),
            })
        };
        assert_eq!(g("100", "0", "1"), d("25"));
        assert_eq!(g("100", "0", "50"), d("50"));
        assert_eq!(g("100", "60", "50"), d("40"));
        assert_eq!(g("100", "100", "1"), d("0"));
        assert_eq!(g("-5", "0", "1"), d("0"));
        assert_eq!(g("10", "0", "-1"), d("0"));
    }
}
