//! A generation request as the engine sees it: validated sampling parameters, the events a
//! request streams back, and the handle that queues requests on a replica's batching
//! worker (`worker`) — or turns them away when the queue is full.
//!
//! Token accounting: `completion_tokens` counts every token the model sampled, including the
//! end-of-generation token that ended it, as llama.cpp and vLLM count them; so
//! `completion_tokens <= max_tokens` always holds and billed tokens equal decoded tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::mpsc;
use wattmesh_proto::openai::{FinishReason, StopSequences, Usage};

use crate::error::EngineError;
use crate::metrics::Metrics;
pub use crate::sampler::Sampling;
pub use crate::scheduler::Priority;

/// OpenAI accepts at most this many stop sequences.
const MAX_STOPS: usize = 4;

/// The sampling knobs of a request, as clients send them.
#[derive(Debug, Clone, Default)]
pub struct SamplingRequest {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub n: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Option<StopSequences>,
    pub max_tokens: Option<u32>,
}

/// Validated generation parameters.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    pub stops: Vec<String>,
}

impl GenParams {
    /// Validates a request against the prompt length and the usable context.
    /// `default_max` is the budget when the client sets none (`None`: the rest of the context).
    pub fn validate(
        req: &SamplingRequest,
        prompt_tokens: usize,
        context: usize,
        default_max: Option<u32>,
    ) -> Result<Self, EngineError> {
        if let Some(n) = req.n
            && n != 1
        {
            return Err(EngineError::invalid("n", "only n=1 is supported"));
        }
        let temperature = req.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(EngineError::invalid(
                "temperature",
                format!("{temperature} is not a valid temperature: it must be between 0 and 2"),
            ));
        }
        let top_p = req.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(EngineError::invalid(
                "top_p",
                format!("{top_p} is not a valid top_p: it must be greater than 0 and at most 1"),
            ));
        }
        let stops = req
            .stop
            .as_ref()
            .map(StopSequences::to_vec)
            .unwrap_or_default();
        if stops.len() > MAX_STOPS {
            return Err(EngineError::invalid(
                "stop",
                format!("at most {MAX_STOPS} stop sequences are allowed"),
            ));
        }
        if prompt_tokens == 0 {
            return Err(EngineError::bad_request("the prompt is empty"));
        }
        let requested = req.max_tokens.or(default_max);
        if requested == Some(0) {
            return Err(EngineError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        let max_new_tokens = match requested {
            Some(m) if prompt_tokens.saturating_add(m as usize) <= context => m as usize,
            None if prompt_tokens < context => context - prompt_tokens,
            _ => {
                return Err(EngineError::ContextLengthExceeded(format!(
                    "This model's maximum context length is {context} tokens. However, you \
                     requested {} tokens ({prompt_tokens} in the prompt, {} for the completion). \
                     Please reduce the length of the prompt or completion.",
                    prompt_tokens as u64 + requested.map_or(1, u64::from),
                    requested.map_or(1, u64::from),
                )));
            }
        };
        let sampling = if temperature == 0.0 {
            Sampling::ArgMax
        } else if top_p < 1.0 {
            Sampling::TopP {
                p: top_p,
                temperature,
            }
        } else {
            Sampling::All { temperature }
        };
        Ok(Self {
            max_new_tokens,
            sampling,
            seed: req.seed.unwrap_or_else(rand::random),
            stops,
        })
    }
}

/// What a request reports back, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Text(String),
    /// The end: why, the exact usage, and the ids of the generated tokens (for callers
    /// that compare token for token; the HTTP layer sends only the text).
    Done {
        finish: FinishReason,
        usage: Usage,
        tokens: Vec<u32>,
    },
    Failed(String),
}

/// A request on its way to the worker.
#[derive(Debug)]
pub(crate) struct Request {
    pub prompt: Vec<u32>,
    pub params: GenParams,
    pub priority: Priority,
    /// Unbounded so the worker never waits for a slow client (that would stall the whole
    /// batch); a request's events are bounded by its `max_tokens` anyway.
    pub events: mpsc::UnboundedSender<GenEvent>,
    pub queued_at: Instant,
}

/// State shared by the handle and the worker: the admission bound and a latency estimate.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Requests accepted but not yet admitted to the running batch.
    pub queued: AtomicUsize,
    /// Exponentially weighted mean seconds a request spends running, as f64 bits.
    pub mean_run_secs: AtomicU64,
}

impl Admission {
    /// Seconds until a place in the queue is likely to free up, for `Retry-After`.
    pub fn retry_after(&self, max_running: usize) -> u64 {
        let mean = f64::from_bits(self.mean_run_secs.load(Ordering::Relaxed));
        let queued = self.queued.load(Ordering::Relaxed) as f64;
        let estimate = mean * (queued / max_running.max(1) as f64).max(1.0);
        (estimate.ceil() as u64).clamp(1, 60)
    }

    pub fn record_run(&self, secs: f64) {
        let old = f64::from_bits(self.mean_run_secs.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            secs
        } else {
            0.8 * old + 0.2 * secs
        };
        self.mean_run_secs.store(new.to_bits(), Ordering::Relaxed);
    }
}

/// A handle to a replica's batching worker; the worker ends when the last handle drops.
pub struct Generator {
    pub(crate) requests: std_mpsc::Sender<Request>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) metrics: Arc<Metrics>,
    /// Requests that may wait for the batch before new ones get 503.
    pub(crate) max_queued: usize,
    pub(crate) max_running: usize,
    /// The most tokens the KV cache holds: a longer prompt can never run.
    pub(crate) capacity_tokens: usize,
}

impl Generator {
    /// Queues a generation; events arrive on the returned receiver. Dropping the receiver
    /// cancels the request and frees its place in the batch at the next step.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenParams,
        priority: Priority,
    ) -> Result<mpsc::UnboundedReceiver<GenEvent>, EngineError> {
        if prompt.len() >= self.capacity_tokens {
            return Err(EngineError::ContextLengthExceeded(format!(
                "The prompt is {} tokens; this replica's KV cache holds {} tokens.",
                prompt.len(),
                self.capacity_tokens
            )));
        }
        let queued = self.admission.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= self.max_queued {
            self.admission.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.add_rejected();
            return Err(EngineError::Overloaded {
                waiting: queued,
                retry_after: self.admission.retry_after(self.max_running),
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let request = Request {
            prompt,
            params,
            priority,
            events: tx,
            queued_at: Instant::now(),
        };
        if self.requests.send(request).is_err() {
            self.admission.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Unavailable);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> SamplingRequest {
        SamplingRequest::default()
    }

    #[test]
    fn validation_table() {
        // (request, prompt tokens, default max, Ok(max_new) or Err(param/kind))
        type Case = (
            SamplingRequest,
            usize,
            Option<u32>,
            Result<usize, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (req(), 10, None, Ok(90)),
            (req(), 10, Some(16), Ok(16)),
            (
                SamplingRequest {
                    max_tokens: Some(90),
                    ..req()
                },
                10,
                None,
                Ok(90),
            ),
            (
                SamplingRequest {
                    max_tokens: Some(91),
                    ..req()
                },
                10,
                None,
                Err("context"),
            ),
            (
                SamplingRequest {
                    max_tokens: Some(u32::MAX),
                    ..req()
                },
                10,
                None,
                Err("context"),
            ),
            (req(), 100, None, Err("context")),
            (req(), 95, Some(16), Err("context")),
            (
                SamplingRequest {
                    max_tokens: Some(0),
                    ..req()
                },
                10,
                None,
                Err("max_tokens"),
            ),
            (
                SamplingRequest {
                    n: Some(2),
                    ..req()
                },
                10,
                None,
                Err("n"),
            ),
            (
                SamplingRequest {
                    temperature: Some(2.5),
                    ..req()
                },
                10,
                None,
                Err("temperature"),
            ),
            (
                SamplingRequest {
                    temperature: Some(-0.1),
                    ..req()
                },
                10,
                None,
                Err("temperature"),
            ),
            (
                SamplingRequest {
                    top_p: Some(0.0),
                    ..req()
                },
                10,
                None,
                Err("top_p"),
            ),
            (
                SamplingRequest {
                    top_p: Some(1.5),
                    ..req()
                },
                10,
                None,
                Err("top_p"),
            ),
            (
                SamplingRequest {
                    stop: Some(StopSequences::Many(vec!["a".into(); 5])),
                    ..req()
                },
                10,
                None,
                Err("stop"),
            ),
        ];
        for (r, prompt, default_max, want) in cases {
            let got = GenParams::validate(&r, prompt, 100, default_max);
            match (got, want) {
                (Ok(p), Ok(m)) => assert_eq!(p.max_new_tokens, m, "{r:?}"),
                (Err(EngineError::ContextLengthExceeded(_)), Err("context")) => {}
                (Err(EngineError::InvalidRequest { param: Some(p), .. }), Err(w)) => {
                    assert_eq!(p, w, "{r:?}")
                }
                (got, want) => panic!("{r:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let p = GenParams::validate(
            &SamplingRequest {
                temperature: Some(0.0),
                ..req()
            },
            1,
            10,
            None,
        )
        .unwrap();
        assert_eq!(p.sampling, Sampling::ArgMax);
    }
}
