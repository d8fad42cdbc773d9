//! The gateway's Prometheus metrics: requests by model, tenant and status; latency,
//! time-to-first-token and gateway-overhead histograms; tokens in and out; limit and budget
//! rejections; spool depth and shipping lag. Served on the gateway's own metrics listener,
//! never on the customers' port (tenant names are in the labels).
//!
//! Each gateway owns its recorder (the `metrics` facade with the Prometheus exporter, scoped
//! with `with_local_recorder`) instead of installing a global one, so several gateways in one
//! process (tests) do not mix their counts.
//!
//! The per-request series (by model and tenant) are registered once and their handles kept in
//! `Series`: registering builds a key from owned label strings and hashes it into the
//! recorder's registry, which, five times per request, cost more than the rest of the
//! bookkeeping together.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use wattmesh_proto::usage::UsageEvent;

use crate::shipper::ShipperStats;
use crate::spool::Spool;

/// Histogram bounds (seconds) for request latency and time to first token.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Histogram bounds (seconds) for what the gateway itself adds before forwarding.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// Why the gateway refused a request itself.
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    RateLimit,
    InsufficientQuota,
}

#[derive(Debug)]
pub struct GatewayMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Handles by model, then tenant.
    series: RwLock<HashMap<String, HashMap<String, Arc<Series>>>>,
    overhead: Histogram,
}

/// The handles of one model and tenant's series.
#[derive(Debug)]
struct Series {
    /// `requests_total` with status 200, by far the most common.
    ok: Counter,
    duration: Histogram,
    ttft: Histogram,
    prompt_tokens: Counter,
    completion_tokens: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("wattmesh_gateway_overhead_seconds".into()),
                OVERHEAD_BUCKETS,
            )
            .and_then(|b| b.set_buckets(LATENCY_BUCKETS));
        // Bucket lists are constants and never empty; the fallback keeps summaries instead.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let overhead = metrics::with_local_recorder(&recorder, || {
            histogram!("wattmesh_gateway_overhead_seconds")
        });
        let this = Self {
            recorder,
            handle,
            series: RwLock::default(),
            overhead,
        };
        this.with(|| {
            describe_counter!(
                "wattmesh_gateway_requests_total",
                "Requests answered, by model, tenant and HTTP status."
            );
            describe_histogram!(
                "wattmesh_gateway_request_duration_seconds",
                Unit::Seconds,
                "From arrival to the answer's last byte."
            );
            describe_histogram!(
                "wattmesh_gateway_ttft_seconds",
                Unit::Seconds,
                "From arrival to the replica's first byte."
            );
            describe_histogram!(
                "wattmesh_gateway_overhead_seconds",
                Unit::Seconds,
                "What the gateway adds before forwarding: auth, admission, routing."
            );
            describe_counter!(
                "wattmesh_gateway_tokens_total",
                "Tokens served, by model, tenant and direction (prompt, completion)."
            );
            describe_counter!(
                "wattmesh_gateway_rejections_total",
                "Requests the gateway refused itself, by reason."
            );
            describe_gauge!(
                "wattmesh_gateway_spool_depth",
                "Usage events spooled and not yet acknowledged by the control plane."
            );
            describe_gauge!(
                "wattmesh_gateway_shipping_lag_seconds",
                "Age of the oldest usage event not yet shipped (0 when none)."
            );
            describe_counter!(
                "wattmesh_gateway_usage_events_shipped_total",
                "Usage events the control plane acknowledged."
            );
            describe_counter!(
                "wattmesh_gateway_usage_ship_failures_total",
                "Failed attempts to ship a usage batch."
            );
        });
        this
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// The handles of `model` and `tenant`'s series, registered on first use.
    fn series(&self, model: &str, tenant: &str) -> Arc<Series> {
        let known = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .and_then(|tenants| tenants.get(tenant))
            .cloned();
        if let Some(series) = known {
            return series;
        }
        let series = Arc::new(self.with(|| Series {
            ok: counter!(
                "wattmesh_gateway_requests_total",
                "model" => model.to_owned(),
                "tenant" => tenant.to_owned(),
                "status" => "200"
            ),
            duration: histogram!(
                "wattmesh_gateway_request_duration_seconds",
                "model" => model.to_owned()
            ),
            ttft: histogram!("wattmesh_gateway_ttft_seconds", "model" => model.to_owned()),
            prompt_tokens: counter!(
                "wattmesh_gateway_tokens_total",
                "model" => model.to_owned(),
                "tenant" => tenant.to_owned(),
                "direction" => "prompt"
            ),
            completion_tokens: counter!(
                "wattmesh_gateway_tokens_total",
                "model" => model.to_owned(),
                "tenant" => tenant.to_owned(),
                "direction" => "completion"
            ),
        }));
        self.series
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(model.to_owned())
            .or_default()
            .entry(tenant.to_owned())
            .or_insert(series)
            .clone()
    }

    /// An answer the gateway sent, with whatever labels it knows (empty when it refused the
    /// request before knowing them).
    pub fn answered(&self, model: &str, tenant: &str, status: u16) {
        if status == 200 {
            self.series(model, tenant).ok.increment(1);
            return;
        }
        self.with(|| {
            counter!(
                "wattmesh_gateway_requests_total",
                "model" => model.to_owned(),
                "tenant" => tenant.to_owned(),
                "status" => status.to_string()
            )
            .increment(1);
        });
    }

    /// A finished forwarded request: its latency, time to first token and tokens.
    pub fn finished(&self, event: &UsageEvent) {
        let series = self.series(&event.model, &event.tenant);
        series.duration.record(event.duration_ms as f64 / 1e3);
        if let Some(ttft) = event.ttft_ms {
            series.ttft.record(ttft as f64 / 1e3);
        }
        series.prompt_tokens.increment(event.prompt_tokens);
        series.completion_tokens.increment(event.completion_tokens);
    }

    pub fn overhead(&self, spent: Duration) {
        self.overhead.record(spent.as_secs_f64());
    }

    pub fn rejected(&self, why: Rejection) {
        let reason = match why {
            Rejection::RateLimit => "rate_limit",
            Rejection::InsufficientQuota => "insufficient_quota",
        };
        self.with(|| {
            counter!("wattmesh_gateway_rejections_total", "reason" => reason).increment(1)
        });
    }

    /// The Prometheus text, with the spool's and shipper's state read now.
    pub fn render(&self, spool: &Spool, shipper: &ShipperStats, now_ms: i64) -> String {
        self.with(|| {
            gauge!("wattmesh_gateway_spool_depth").set(spool.depth() as f64);
            let lag = spool
                .oldest_started_at_ms()
                .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1e3);
            gauge!("wattmesh_gateway_shipping_lag_seconds").set(lag);
            counter!("wattmesh_gateway_usage_events_shipped_total")
                .absolute(shipper.events_shipped());
            counter!("wattmesh_gateway_usage_ship_failures_total").absolute(shipper.failures());
        });
        self.handle.render()
    }
}

/// Shared between the request path and the metrics listener.
pub type SharedMetrics = Arc<GatewayMetrics>;
