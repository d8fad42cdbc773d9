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
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
];

/// The counters of one replica.
#[derive(Debug, Default)]
pub struct Metrics {
    running: AtomicI64,
    waiting: AtomicI64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    success_stop: AtomicU64,
    success_length: AtomicU64,
    ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
    ttft_count: AtomicU64,
    ttft_sum_micros: AtomicU64,
}

impl Metrics {
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
        let secs = ttft.as_secs_f64();
        for (bound, bucket) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_micros
            .fetch_add(ttft.as_micros() as u64, Ordering::Relaxed);
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
        let name = "vllm:time_to_first_token_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Histogram of time to first token in seconds.\n# TYPE {name} histogram"
        );
        for (bound, bucket) in TTFT_BUCKETS.iter().zip(&self.ttft_buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label},le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.ttft_count);
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {count}");
        let sum = get(&self.ttft_sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{label}}} {count}");
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
