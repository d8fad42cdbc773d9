//! Rate limits, enforced in this gateway alone with no round trip: requests per minute,
//! tokens per minute and requests in flight, per key and per tenant. The buckets are
//! [`wattmesh_domain::limits::Bucket`]s; this module owns them, checks both scopes at once
//! (nothing is taken unless everything fits), and gives back what a finished request did not
//! use.
//!
//! Limits come with the config; a changed limit applies to the bucket at its next use, so a
//! new config is in force for the next request. A limit is the whole fleet's: the config says
//! how many gateways are live, and each enforces its share ([`Bucket::shared`]; concurrency
//! rounded up), so behind a load balancer that spreads requests a tenant gets its limit, and
//! at most one request per gateway more (see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use wattmesh_domain::limits::{Bucket, openai_duration};
use wattmesh_proto::api::Limits;

/// What a request asks of the limits.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub key: &'a str,
    pub key_limits: Limits,
    pub tenant: &'a str,
    pub tenant_limits: Limits,
    /// The request's worst case: prompt bound plus `max_tokens`.
    pub tokens: u64,
    /// How many gateways share every limit (this one's share is `1/gateways`).
    pub gateways: u32,
    pub now_ms: i64,
}

/// OpenAI's `x-ratelimit-*` values of the tightest applicable limit, for every answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window is full again, as OpenAI writes it (`1s`, `6m0s`).
    pub reset: String,
}

impl RateHeaders {
    /// The header pairs, names as OpenAI spells them.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(w) = &self.requests {
            out.push(("x-ratelimit-limit-requests", w.limit.to_string()));
            out.push(("x-ratelimit-remaining-requests", w.remaining.to_string()));
            out.push(("x-ratelimit-reset-requests", w.reset.clone()));
        }
        if let Some(w) = &self.tokens {
            out.push(("x-ratelimit-limit-tokens", w.limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", w.remaining.to_string()));
            out.push(("x-ratelimit-reset-tokens", w.reset.clone()));
        }
        out
    }
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    /// Seconds, for `Retry-After` (at least 1).
    pub retry_after_s: u64,
    pub headers: RateHeaders,
}

#[derive(Debug)]
struct Scope {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    in_flight: u32,
}

impl Scope {
    fn new() -> Self {
        Self {
            rpm: None,
            tpm: None,
            in_flight: 0,
        }
    }

    /// Brings the buckets in line with `limits` and this gateway's share (new, changed or
    /// removed).
    fn apply(&mut self, limits: Limits, gateways: u32, now_ms: i64) {
        sync(&mut self.rpm, limits.rpm, gateways, now_ms);
        sync(&mut self.tpm, limits.tpm, gateways, now_ms);
    }
}

fn sync(bucket: &mut Option<Bucket>, limit: Option<u32>, gateways: u32, now_ms: i64) {
    let gateways = gateways.max(1);
    match (bucket.as_mut(), limit) {
        (_, None) => *bucket = None,
        (None, Some(l)) => *bucket = Some(Bucket::shared(l, gateways, now_ms)),
        (Some(b), Some(l)) if b.limit() != u64::from(l) || b.share() != gateways => {
            b.set_limit(l, gateways, now_ms);
        }
        (Some(_), Some(_)) => {}
    }
}

/// This gateway's slots of a concurrency limit shared by `gateways`: rounded up, so every
/// gateway can run at least one request.
fn concurrency_share(max: u32, gateways: u32) -> u32 {
    max.div_ceil(gateways.max(1))
}

/// Every scope's buckets. One lock for all: each check is a few arithmetic operations, far
/// shorter than anything else a request does.
#[derive(Debug, Default)]
pub struct RateLimiter {
    scopes: Mutex<HashMap<String, Scope>>,
}

/// A request admitted by the limits: it holds its concurrency slots and its worst-case tokens
/// until [`Admitted::finish`] gives back what it did not use (or it is dropped, which gives
/// back the slots only: an unknown usage keeps its worst case counted).
#[derive(Debug)]
pub struct Admitted {
    limiter: Arc<RateLimiter>,
    scopes: [String; 2],
    tokens: u64,
    done: bool,
}

impl RateLimiter {
    /// Admits the request if every limit of its key and its tenant has room, taking one
    /// request, its worst-case tokens and a slot from each; refuses it otherwise, taking
    /// nothing. Either way returns the headers to send.
    pub fn admit(self: &Arc<Self>, ask: Ask<'_>) -> Result<(Admitted, RateHeaders), Refusal> {
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        let key_id = format!("k/{}", ask.key);
        let tenant_id = format!("t/{}", ask.tenant);
        let plan = [
            (&key_id, ask.key_limits, "key"),
            (&tenant_id, ask.tenant_limits, "tenant"),
        ];
        // Check everything first, so a refusal takes nothing.
        let mut wait_ms: Option<u64> = None;
        let mut reason: Option<String> = None;
        for (id, limits, what) in plan {
            let scope = scopes.entry(id.clone()).or_insert_with(Scope::new);
            scope.apply(limits, ask.gateways, ask.now_ms);
            if let Some(max) = limits.concurrency
                && scope.in_flight >= concurrency_share(max, ask.gateways)
            {
                reason.get_or_insert(format!(
                    "Too many requests in flight for this {what}: the limit is {max} at once."
                ));
                // A slot frees when a request ends; a second is a fair guess.
                wait_ms = Some(wait_ms.unwrap_or(0).max(1000));
            }
            if let Some(b) = scope.rpm.as_mut()
                && !b.has(1, ask.now_ms)
            {
                let w = b.wait_for(1, ask.now_ms).unwrap_or(60_000);
                reason.get_or_insert(format!(
                    "Rate limit reached for requests per minute on this {what}: limit {}. \
                     Try again in {}.",
                    b.limit(),
                    openai_duration(w)
                ));
                wait_ms = Some(wait_ms.unwrap_or(0).max(w));
            }
            if let Some(b) = scope.tpm.as_mut()
                && !b.has(ask.tokens, ask.now_ms)
            {
                let msg = match b.wait_for(ask.tokens, ask.now_ms) {
                    Some(w) => {
                        wait_ms = Some(wait_ms.unwrap_or(0).max(w));
                        format!(
                            "Rate limit reached for tokens per minute on this {what}: limit \
                             {}, requested {}. Try again in {}.",
                            b.limit(),
                            ask.tokens,
                            openai_duration(w)
                        )
                    }
                    None => {
                        wait_ms = Some(wait_ms.unwrap_or(0).max(60_000));
                        format!(
                            "Request too large for the tokens-per-minute limit of this {what}: \
                             limit {}, requested {}. Lower max_tokens or the prompt.",
                            b.limit(),
                            ask.tokens
                        )
                    }
                };
                reason.get_or_insert(msg);
            }
        }
        if let Some(message) = reason {
            let headers = headers_of(&mut scopes, [&key_id, &tenant_id], ask.now_ms);
            return Err(Refusal {
                message,
                retry_after_s: wait_ms.unwrap_or(1000).div_ceil(1000).max(1),
                headers,
            });
        }
        for id in [&key_id, &tenant_id] {
            if let Some(scope) = scopes.get_mut(id) {
                scope.in_flight += 1;
                if let Some(b) = scope.rpm.as_mut() {
                    b.try_take(1, ask.now_ms);
                }
                if let Some(b) = scope.tpm.as_mut() {
                    b.try_take(ask.tokens, ask.now_ms);
                }
            }
        }
        let headers = headers_of(&mut scopes, [&key_id, &tenant_id], ask.now_ms);
        drop(scopes);
        Ok((
            Admitted {
                limiter: self.clone(),
                scopes: [key_id, tenant_id],
                tokens: ask.tokens,
                done: false,
            },
            headers,
        ))
    }
}

/// The tightest window (fewest remaining) of the given scopes, per kind.
fn headers_of(scopes: &mut HashMap<String, Scope>, ids: [&String; 2], now_ms: i64) -> RateHeaders {
    let mut out = RateHeaders::default();
    for id in ids {
        let Some(scope) = scopes.get_mut(id) else {
            continue;
        };
        for (bucket, slot) in [
            (scope.rpm.as_mut(), &mut out.requests),
            (scope.tpm.as_mut(), &mut out.tokens),
        ] {
            let Some(b) = bucket else { continue };
            let window = Window {
                limit: b.limit(),
                remaining: b.remaining(now_ms),
                reset: openai_duration(b.until_full(now_ms)),
            };
            if slot.as_ref().is_none_or(|w| window.remaining < w.remaining) {
                *slot = Some(window);
            }
        }
    }
    out
}

impl Admitted {
    /// The request ended having used `used_tokens`: the rest of its worst case goes back.
    pub fn finish(mut self, used_tokens: u64, now_ms: i64) {
        let unused = self.tokens.saturating_sub(used_tokens);
        self.release(unused, now_ms);
    }

    fn release(&mut self, unused_tokens: u64, now_ms: i64) {
        if self.done {
            return;
        }
        self.done = true;
        let mut scopes = self
            .limiter
            .scopes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in &self.scopes {
            if let Some(scope) = scopes.get_mut(id) {
                scope.in_flight = scope.in_flight.saturating_sub(1);
                if let Some(b) = scope.tpm.as_mut() {
                    b.give_back(unused_tokens, now_ms);
                }
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // Usage unknown: the worst case stays counted; the slot is free.
        self.release(0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(key_limits: Limits, tenant_limits: Limits, tokens: u64, now_ms: i64) -> Ask<'a> {
        Ask {
            key: "k1",
            key_limits,
            tenant: "t1",
            tenant_limits,
            tokens,
            gateways: 1,
            now_ms,
        }
    }

    fn limits(rpm: Option<u32>, tpm: Option<u32>, concurrency: Option<u32>) -> Limits {
        Limits {
            rpm,
            tpm,
            concurrency,
        }
    }

    #[test]
    fn requests_per_minute_refuse_with_retry_after_and_headers() {
        let limiter = Arc::new(RateLimiter::default());
        let l = limits(Some(2), None, None);
        let mut held = Vec::new();
        for _ in 0..2 {
            let (a, h) = limiter.admit(ask(l, Limits::default(), 10, 0)).unwrap();
            held.push(a);
            assert_eq!(h.requests.as_ref().unwrap().limit, 2);
        }
        let refusal = limiter.admit(ask(l, Limits::default(), 10, 0)).unwrap_err();
        assert_eq!(refusal.retry_after_s, 30);
        assert_eq!(refusal.headers.requests.as_ref().unwrap().remaining, 0);
        assert!(refusal.message.contains("requests per minute on this key"));
        // Half a minute later one request has come back.
        assert!(limiter.admit(ask(l, Limits::default(), 10, 30_000)).is_ok());
    }

    #[test]
    fn a_refusal_takes_nothing_from_either_scope() {
        let limiter = Arc::new(RateLimiter::default());
        let tenant = limits(Some(100), Some(1000), None);
        let key = limits(None, Some(100), None);
        // Too many tokens for the key: refused, and the tenant keeps all it had.
        assert!(limiter.admit(ask(key, tenant, 500, 0)).is_err());
        let (_a, h) = limiter
            .admit(ask(Limits::default(), tenant, 1000, 0))
            .unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 0);
        assert_eq!(h.requests.unwrap().remaining, 99);
    }

    #[test]
    fn unused_tokens_and_slots_come_back() {
        let limiter = Arc::new(RateLimiter::default());
        let l = limits(None, Some(1000), Some(1));
        let (a, _) = limiter.admit(ask(l, Limits::default(), 800, 0)).unwrap();
        let refusal = limiter
            .admit(ask(l, Limits::default(), 100, 0))
            .unwrap_err();
        assert!(refusal.message.contains("in flight"), "{}", refusal.message);
        a.finish(50, 0);
        let (_b, h) = limiter.admit(ask(l, Limits::default(), 100, 0)).unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 850);
    }

    #[test]
    fn a_dropped_request_frees_its_slot_but_keeps_its_tokens() {
        let limiter = Arc::new(RateLimiter::default());
        let l = limits(None, Some(1000), Some(1));
        drop(limiter.admit(ask(l, Limits::default(), 800, 0)).unwrap());
        let (_b, h) = limiter.admit(ask(l, Limits::default(), 100, 0)).unwrap();
        assert_eq!(h.tokens.unwrap().remaining, 100);
    }

    #[test]
    fn a_changed_limit_applies_to_the_next_request() {
        let limiter = Arc::new(RateLimiter::default());
        let rpm = |n| limits(Some(n), None, None);
        for _ in 0..2 {
            let (a, _) = limiter.admit(ask(rpm(3), Limits::default(), 1, 0)).unwrap();
            a.finish(1, 0);
        }
        // One of the three is left; lowered to one, one more goes through and then none.
        let (a, h) = limiter.admit(ask(rpm(1), Limits::default(), 1, 0)).unwrap();
        assert_eq!(h.requests.unwrap().limit, 1);
        a.finish(1, 0);
        let refusal = limiter
            .admit(ask(rpm(1), Limits::default(), 1, 0))
            .unwrap_err();
        assert_eq!(refusal.headers.requests.unwrap().remaining, 0);
        // Lifting the limit admits at once.
        assert!(
            limiter
                .admit(ask(Limits::default(), Limits::default(), 1, 0))
                .is_ok()
        );
    }

    #[test]
    fn two_gateways_each_enforce_half_of_every_limit_and_show_the_whole() {
        let limiter = Arc::new(RateLimiter::default());
        let key = limits(Some(10), Some(1000), Some(3));
        let shared = |tokens, now_ms| Ask {
            gateways: 2,
            ..ask(key, Limits::default(), tokens, now_ms)
        };
        let mut held = Vec::new();
        for i in 0..2 {
            let (a, h) = limiter.admit(shared(1, 0)).unwrap();
            let requests = h.requests.unwrap();
            assert_eq!(requests.limit, 10, "the whole limit in the headers");
            assert_eq!(requests.remaining, 8 - 2 * i, "what the fleet has left");
            held.push(a);
        }
        // Concurrency 3 over two gateways: 2 here (rounded up).
        let refusal = limiter.admit(shared(1, 0)).unwrap_err();
        assert!(
            refusal.message.contains("the limit is 3"),
            "{}",
            refusal.message
        );
        for a in held.drain(..) {
            a.finish(1, 0);
        }
        // Five requests per minute here: three more, then refused.
        for _ in 0..3 {
            limiter.admit(shared(1, 0)).unwrap().0.finish(1, 0);
        }
        let refusal = limiter.admit(shared(1, 0)).unwrap_err();
        assert!(refusal.message.contains("limit 10"), "{}", refusal.message);
        assert_eq!(refusal.retry_after_s, 12, "half the refill rate");
        // The other gateway gone, the whole limit is this one's again, refilling at its rate:
        // half a request by 6 s at the shared rate, the other half by 9 s at the whole.
        assert!(
            limiter
                .admit(ask(key, Limits::default(), 1, 6_000))
                .is_err()
        );
        assert!(limiter.admit(ask(key, Limits::default(), 1, 9_000)).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_whole_limit_says_so() {
        let limiter = Arc::new(RateLimiter::default());
        let refusal = limiter
            .admit(ask(
                Limits::default(),
                limits(None, Some(100), None),
                101,
                0,
            ))
            .unwrap_err();
        assert!(
            refusal.message.contains("Request too large"),
            "{}",
            refusal.message
        );
    }
}
