//! Per-replica counters, rendered as Prometheus text at `GET /metrics`.
//!
//! Several replicas live in one process (`wattmesh up`), so a global metrics recorder would
//! mix them; each replica owns its atomics instead and renders them itself. Names follow
//! vLLM's (`vllm:*`) so the gateway and dashboards read the embedded engine and a vLLM
//! container the same way.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use wattmesh_proto::openai::FinishReason;

/// Upper bounds (seconds) of the time-to-first-token histogram, as vLLM's.
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
];
/// Upper bounds (seconds) of the inter-token latency histogram, as vLLM's.
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Upper bounds (seconds) of the end-to-end request latency histogram.
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
];
/// Upper bounds of the sequences-per-step histogram (our own: vLLM has no counterpart).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A Prometheus histogram over fixed buckets, in atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum in millionths, so it stays an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if value <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label},le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{label}}} {count}");
    }
}

/// The counters of one replica.
#[derive(Debug)]
pub struct Metrics {
    running: AtomicI64,
    waiting: AtomicI64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    success_stop: AtomicU64,
    success_length: AtomicU64,
    preemptions: AtomicU64,
    rejected: AtomicU64,
    /// KV-cache blocks in use, in millionths of the pool (an integer atomic).
    kv_usage_millionths: AtomicU64,
    ttft: Histogram,
    pub(crate) itl: Histogram,
    e2e: Histogram,
    pub(crate) batch: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            running: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            success_stop: AtomicU64::new(0),
            success_length: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            kv_usage_millionths: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            batch: Histogram::new(BATCH_BUCKETS),
        }
    }
}

impl Metrics {
    /// Sets the waiting and running gauges (the batching worker knows both exactly).
    pub fn set_queues(&self, waiting: usize, running: usize) {
        self.waiting.store(waiting as i64, Ordering::Relaxed);
        self.running.store(running as i64, Ordering::Relaxed);
    }

    /// Records the fraction of the KV cache in use.
    pub fn set_kv_usage(&self, fraction: f64) {
        self.kv_usage_millionths
            .store((fraction.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn kv_usage(&self) -> f64 {
        self.kv_usage_millionths.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn add_preemptions(&self, n: u64) {
        self.preemptions.fetch_add(n, Ordering::Relaxed);
    }

    /// A request turned away because the queue was full.
    pub fn add_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended: its outcome and its end-to-end latency.
    pub fn request_done(&self, outcome: Option<FinishReason>, latency: Duration) {
        match outcome {
            Some(FinishReason::Stop) => self.success_stop.fetch_add(1, Ordering::Relaxed),
            Some(FinishReason::Length) => self.success_length.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        self.e2e.observe(latency.as_secs_f64());
    }

    pub fn observe_itl(&self, gap: Duration) {
        self.itl.observe(gap.as_secs_f64());
    }

    /// One engine step ran `sequences` sequences.
    pub fn observe_batch(&self, sequences: usize) {
        self.batch.observe(sequences as f64);
    }

    pub fn queued(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued request starts running.
    pub fn started(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued request is dropped before it ran.
    pub fn dequeued(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    /// A running request ends; `outcome` is `None` when it failed or was cancelled.
    pub fn finished(&self, outcome: Option<FinishReason>) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Some(FinishReason::Stop) => self.success_stop.fetch_add(1, Ordering::Relaxed),
            Some(FinishReason::Length) => self.success_length.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    pub fn add_prompt_tokens(&self, n: u64) {
        self.prompt_tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_generation_tokens(&self, n: u64) {
        self.generation_tokens.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe_ttft(&self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    /// Requests running now.
    pub fn running(&self) -> i64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Requests waiting for the model now.
    pub fn waiting(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format, labelled with the served model name.
    pub fn render(&self, model: &str) -> String {
        let label = format!(
            "model_name=\"{}\"",
            model.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (suffix_labels, value) in lines {
                let _ = writeln!(out, "{name}{suffix_labels} {value}");
            }
        };
        let plain = |v: String| vec![(format!("{{{label}}}"), v)];
        metric(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests currently running.",
            &plain(self.running().to_string()),
        );
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            &plain(self.waiting().to_string()),
        );
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            &plain(get(&self.prompt_tokens).to_string()),
        );
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            &plain(get(&self.generation_tokens).to_string()),
        );
        metric(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            &[
                (
                    format!("{{{label},finished_reason=\"stop\"}}"),
                    get(&self.success_stop).to_string(),
                ),
                (
                    format!("{{{label},finished_reason=\"length\"}}"),
                    get(&self.success_length).to_string(),
                ),
            ],
        );
        metric(
            "vllm:num_preemptions_total",
            "counter",
            "Cumulative number of preemptions from the engine.",
            &plain(get(&self.preemptions).to_string()),
        );
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            &plain(self.kv_usage().to_string()),
        );
        metric(
            "wattmesh:requests_rejected_total",
            "counter",
            "Requests turned away with 503 because the queue was full.",
            &plain(get(&self.rejected).to_string()),
        );
        self.ttft.render(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &label,
        );
        self.itl.render(
            &mut out,
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &label,
        );
        self.e2e.render(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            &label,
        );
        self.batch.render(
            &mut out,
            "wattmesh:batch_sequences",
            "Histogram of the sequences that shared one engine step.",
            &label,
        );
        out
    }
}

/// One request's place in the waiting/running gauges; dropping it (a client that went away)
/// takes the request out of whichever gauge it is in.
pub struct Ticket<'a> {
    metrics: &'a Metrics,
    running: bool,
    done: bool,
}

impl<'a> Ticket<'a> {
    /// Counts a new request as waiting.
    pub fn queue(metrics: &'a Metrics) -> Self {
        metrics.queued();
        Self {
            metrics,
            running: false,
            done: false,
        }
    }

    pub fn start(&mut self) {
        if !self.running {
            self.metrics.started();
            self.running = true;
        }
    }

    pub fn finish(mut self, outcome: Option<FinishReason>) {
        self.start();
        self.metrics.finished(outcome);
        self.done = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.running {
            self.metrics.finished(None);
        } else {
            self.metrics.dequeued();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.queued();
        m.started();
        m.add_prompt_tokens(7);
        m.add_generation_tokens(3);
        m.observe_ttft(Duration::from_millis(30));
        m.finished(Some(FinishReason::Stop));
        let text = m.render("smol");
        for line in [
            "vllm:num_requests_running{model_name=\"smol\"} 0",
            "vllm:num_requests_waiting{model_name=\"smol\"} 0",
            "vllm:prompt_tokens_total{model_name=\"smol\"} 7",
            "vllm:generation_tokens_total{model_name=\"smol\"} 3",
            "vllm:request_success_total{model_name=\"smol\",finished_reason=\"stop\"} 1",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.025\"} 0",
            "vllm:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.05\"} 1",
            "vllm:time_to_first_token_seconds_count{model_name=\"smol\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
