//! Rate limits as token buckets: requests per minute and tokens per minute, each a bucket that
//! holds a minute's allowance and refills continuously, so a burst of the whole minute's
//! allowance is allowed and then requests flow at the steady rate. The clock is the caller's
//! (milliseconds), which keeps this pure and testable.
//!
//! Tokens per minute are taken at a request's worst case when it is admitted and the unused
//! part is given back when it ends ([`Bucket::give_back`]), as OpenAI counts `max_tokens`.
//!
//! **Shared limits.** A limit is the whole fleet's, and every gateway enforces it alone (no
//! round trip per request), so with `n` gateways each bucket holds and refills `1/n` of it
//! ([`Bucket::shared`]): behind a load balancer that spreads requests, the fleet admits the
//! limit and no more. A request may take a bucket into debt once it holds its share (a share
//! smaller than one request, or than a large prompt, must still admit something), which the
//! refill repays before the next: the fleet is over a limit by at most one request per
//! gateway, the same bound as prepaid credit.

/// One bucket: a `limit` per minute, of which this holder enforces `1/share`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    limit: u32,
    share: u32,
    /// `limit / share`: what this holder may burst, and refills per minute.
    capacity: f64,
    level: f64,
    updated_ms: i64,
}

const MINUTE_MS: f64 = 60_000.0;

impl Bucket {
    /// A full bucket for a limit of `per_minute`, enforced alone.
    pub fn new(per_minute: u32, now_ms: i64) -> Self {
        Self::shared(per_minute, 1, now_ms)
    }

    /// A full bucket for this holder's `1/share` of a limit of `per_minute` (a share of 0 is
    /// taken as 1).
    pub fn shared(per_minute: u32, share: u32, now_ms: i64) -> Self {
        let share = share.max(1);
        let capacity = f64::from(per_minute) / f64::from(share);
        Self {
            limit: per_minute,
            share,
            capacity,
            level: capacity,
            updated_ms: now_ms,
        }
    }

    /// The limit it enforces a share of, per minute (the whole fleet's).
    pub fn limit(&self) -> u64 {
        u64::from(self.limit)
    }

    /// How many holders share the limit.
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Changes the limit or the share, keeping what is left (capped at the new share).
    pub fn set_limit(&mut self, per_minute: u32, share: u32, now_ms: i64) {
        self.refill(now_ms);
        let fresh = Self::shared(per_minute, share, now_ms);
        self.limit = fresh.limit;
        self.share = fresh.share;
        self.capacity = fresh.capacity;
        self.level = self.level.min(self.capacity);
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64;
        self.level = (self.level + elapsed * self.capacity / MINUTE_MS).min(self.capacity);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// What must be in the bucket to admit `n`: `n` itself, or the whole share when `n` is
    /// more than the share (the rest becomes debt).
    fn needed(&self, n: u64) -> f64 {
        (n as f64).min(self.capacity)
    }

    /// Whether `n` may be taken now (without taking it). More than the whole limit never may.
    pub fn has(&mut self, n: u64, now_ms: i64) -> bool {
        self.refill(now_ms);
        // The epsilon absorbs the refill's rounding (a third of a request refilled three times).
        n <= self.limit() && self.level + 1e-9 >= self.needed(n)
    }

    /// Takes `n` if it may.
    pub fn try_take(&mut self, n: u64, now_ms: i64) -> bool {
        if !self.has(n, now_ms) {
            return false;
        }
        self.level -= n as f64;
        true
    }

    /// Returns `n` taken earlier and not used.
    pub fn give_back(&mut self, n: u64, now_ms: i64) {
        self.refill(now_ms);
        self.level = (self.level + n as f64).min(self.capacity);
    }

    /// What the fleet has left now, whole units: this holder's level times the share (exact
    /// for one holder; for several, what is left if the load balancer spreads evenly).
    pub fn remaining(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
        ((self.level * f64::from(self.share)).max(0.0) as u64).min(self.limit())
    }

    /// Milliseconds until `n` may be taken (0 if it may now). A request larger than the
    /// whole limit never fits: `None`.
    pub fn wait_for(&mut self, n: u64, now_ms: i64) -> Option<u64> {
        self.refill(now_ms);
        if n > self.limit() {
            return None;
        }
        if self.capacity <= 0.0 {
            return Some(0);
        }
        let missing = (self.needed(n) - self.level).max(0.0);
        Some((missing * MINUTE_MS / self.capacity).ceil() as u64)
    }

    /// Milliseconds until the bucket is full again (OpenAI's `x-ratelimit-reset-*`).
    pub fn until_full(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
        if self.capacity <= 0.0 {
            return 0;
        }
        ((self.capacity - self.level) * MINUTE_MS / self.capacity).ceil() as u64
    }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` headers: `1s`, `6m0s`, `120ms`.
pub fn openai_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_of_burst_then_the_steady_rate() {
        let mut b = Bucket::new(60, 0);
        for i in 0..60 {
            assert!(b.try_take(1, 0), "request {i} of the burst");
        }
        assert!(!b.try_take(1, 0));
        assert_eq!(b.wait_for(1, 0), Some(1000));
        assert!(!b.try_take(1, 999));
        assert!(b.try_take(1, 1000));
        assert_eq!(b.until_full(1000), 60_000);
        assert_eq!(b.remaining(61_000), 60);
    }

    #[test]
    fn unused_tokens_come_back() {
        let mut b = Bucket::new(1000, 0);
        assert!(b.try_take(800, 0));
        assert!(!b.try_take(300, 0));
        b.give_back(700, 0);
        assert_eq!(b.remaining(0), 900);
        b.give_back(10_000, 0);
        assert_eq!(b.remaining(0), 1000);
        assert_eq!(b.wait_for(1001, 0), None);
    }

    #[test]
    fn the_clock_going_backwards_takes_nothing() {
        let mut b = Bucket::new(60, 10_000);
        assert!(b.try_take(60, 10_000));
        assert_eq!(b.remaining(5_000), 0);
        assert_eq!(b.remaining(11_000), 1);
    }

    #[test]
    fn a_lower_limit_caps_what_is_left() {
        let mut b = Bucket::new(100, 0);
        b.set_limit(10, 1, 0);
        assert_eq!(b.remaining(0), 10);
        assert_eq!(b.limit(), 10);
    }

    #[test]
    fn two_holders_of_a_shared_limit_admit_the_limit_between_them() {
        let mut a = Bucket::shared(60, 2, 0);
        let mut b = Bucket::shared(60, 2, 0);
        let burst = (0..100)
            .filter(|i| if i % 2 == 0 { &mut a } else { &mut b }.try_take(1, 0))
            .count();
        assert_eq!(burst, 60);
        // Then the fleet's steady rate, one a second between them: each refills one request
        // every two seconds, so the minute after the burst admits 58 (the first two seconds
        // only refill) to 60.
        let minute = (1..=60_000)
            .step_by(100)
            .filter(|t| {
                let holder = if (t / 100) % 2 == 0 { &mut a } else { &mut b };
                holder.try_take(1, *t)
            })
            .count();
        assert!((58..=60).contains(&minute), "{minute} in the next minute");
        assert_eq!(a.limit(), 60, "headers show the whole limit");
    }

    #[test]
    fn a_share_smaller_than_one_request_still_admits_and_repays_the_debt() {
        // One request a minute over three gateways: each admits one, then waits three minutes.
        let mut b = Bucket::shared(1, 3, 0);
        assert!(b.try_take(1, 0));
        assert!(!b.try_take(1, 0));
        assert_eq!(b.remaining(0), 0);
        assert_eq!(b.wait_for(1, 0), Some(180_000));
        assert!(!b.try_take(1, 179_999));
        assert!(b.try_take(1, 180_000));
    }

    #[test]
    fn a_request_larger_than_the_share_but_within_the_limit_fits() {
        let mut b = Bucket::shared(1000, 4, 0);
        assert_eq!(b.wait_for(600, 0), Some(0));
        assert!(b.try_take(600, 0), "a whole share in the bucket admits it");
        assert!(!b.has(1, 0), "in debt until the refill repays it");
        assert_eq!(
            b.wait_for(1001, 0),
            None,
            "more than the whole limit never fits"
        );
        assert_eq!(b.remaining(0), 0);
    }

    #[test]
    fn a_new_share_keeps_what_is_left_capped_at_the_share() {
        let mut b = Bucket::new(100, 0);
        assert!(b.try_take(10, 0));
        b.set_limit(100, 2, 0);
        assert_eq!(
            b.remaining(0),
            100,
            "50 held here, shown as the fleet's 100"
        );
        assert!(b.try_take(50, 0));
        assert!(!b.has(1, 0));
        b.set_limit(100, 1, 0);
        assert_eq!(b.share(), 1);
        assert_eq!(b.remaining(30_000), 50, "refills at the whole limit again");
        assert_eq!(
            Bucket::shared(10, 0, 0).share(),
            1,
            "a share of 0 is one holder"
        );
    }

    proptest::proptest! {
        /// Whatever the limit, the number of gateways and the order requests reach them in,
        /// the fleet admits no more than the limit's burst and refill plus one request per
        /// gateway.
        #[test]
        fn a_shared_limit_is_never_exceeded_by_more_than_one_request_per_holder(
            limit in 1u32..200,
            holders in 1u32..6,
            arrivals in proptest::collection::vec((0usize..6, 1u64..400, 0i64..2_000), 1..400),
        ) {
            let mut buckets: Vec<Bucket> = (0..holders).map(|_| Bucket::shared(limit, holders, 0)).collect();
            let (mut now, mut taken, mut largest) = (0i64, 0u64, 0u64);
            let count = buckets.len();
            for (holder, n, step) in arrivals {
                now += step;
                let n = n.min(u64::from(limit));
                largest = largest.max(n);
                if buckets[holder % count].try_take(n, now) {
                    taken += n;
                }
            }
            let refill = u64::from(limit) * now as u64 / 60_000;
            // Each holder's debt is at most one request beyond its share.
            let one_each = u64::from(holders) * largest;
            proptest::prop_assert!(taken <= u64::from(limit) + refill + one_each);
            proptest::prop_assert!(
                holders > 1 || taken <= u64::from(limit) + refill + 1,
                "alone, a bucket is exact: {} taken", taken
            );
        }
    }

    #[test]
    fn durations_read_like_openai_headers() {
        for (ms, want) in [
            (0, "0ms"),
            (120, "120ms"),
            (1000, "1s"),
            (1001, "2s"),
            (360_000, "6m0s"),
            (3_723_000, "1h2m3s"),
        ] {
            assert_eq!(openai_duration(ms), want);
        }
    }
}
