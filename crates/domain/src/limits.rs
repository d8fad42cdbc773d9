//! Rate limits as token buckets: requests per minute and tokens per minute, each a bucket that
//! holds a minute's allowance and refills continuously, so a burst of the whole minute's
//! allowance is allowed and then requests flow at the steady rate. The clock is the caller's
//! (milliseconds), which keeps this pure and testable.
//!
//! Tokens per minute are taken at a request's worst case when it is admitted and the unused
//! part is given back when it ends ([`Bucket::give_back`]), as OpenAI counts `max_tokens`.

/// One bucket. `capacity` is the per-minute limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    capacity: f64,
    level: f64,
    updated_ms: i64,
}

const MINUTE_MS: f64 = 60_000.0;

impl Bucket {
    /// A full bucket for a limit of `per_minute`.
    pub fn new(per_minute: u32, now_ms: i64) -> Self {
        Self {
            capacity: f64::from(per_minute),
            level: f64::from(per_minute),
            updated_ms: now_ms,
        }
    }

    /// The limit it enforces, per minute.
    pub fn limit(&self) -> u64 {
        self.capacity as u64
    }

    /// Changes the limit, keeping what is left (capped at the new limit).
    pub fn set_limit(&mut self, per_minute: u32, now_ms: i64) {
        self.refill(now_ms);
        self.capacity = f64::from(per_minute);
        self.level = self.level.min(self.capacity);
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.updated_ms).max(0) as f64;
        self.level = (self.level + elapsed * self.capacity / MINUTE_MS).min(self.capacity);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Whether `n` is available now (without taking it).
    pub fn has(&mut self, n: u64, now_ms: i64) -> bool {
        self.refill(now_ms);
        self.level >= n as f64
    }

    /// Takes `n` if available.
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

    /// What is left now, whole units.
    pub fn remaining(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
        self.level.max(0.0) as u64
    }

    /// Milliseconds until `n` will be available (0 if it is now). A request larger than the
    /// whole limit never fits: `None`.
    pub fn wait_for(&mut self, n: u64, now_ms: i64) -> Option<u64> {
        self.refill(now_ms);
        let n = n as f64;
        if n > self.capacity {
            return None;
        }
        let missing = (n - self.level).max(0.0);
        Some((missing * MINUTE_MS / self.capacity).ceil() as u64)
    }

    /// Milliseconds until the bucket is full again (OpenAI's `x-ratelimit-reset-*`).
    pub fn until_full(&mut self, now_ms: i64) -> u64 {
        self.refill(now_ms);
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
        b.set_limit(10, 0);
        assert_eq!(b.remaining(0), 10);
        assert_eq!(b.limit(), 10);
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
