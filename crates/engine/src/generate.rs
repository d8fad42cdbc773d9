//! Text generation: validated sampling parameters and the worker thread that owns the model.
//!
//! Generation is CPU-bound and must stay off the async runtime, and v1 serves one generation
//! at a time per replica (continuous batching is a later issue). So each chat replica has one
//! worker thread that owns the weights and takes jobs from a queue; a job carries a bounded
//! channel back to its request. Requests waiting in the queue are `num_requests_waiting`.
//! When a client goes away its receiver is dropped, the channel closes, and the worker stops
//! that job before the next forward pass.
//!
//! Every job starts from a clone of the pristine weights: candle's `ModelWeights` keeps the KV
//! cache (and a mask cache keyed by prompt length) inside itself, and cloning is cheap (the
//! tensors are reference-counted), so no state leaks from one request into the next.
//!
//! Token accounting: `completion_tokens` counts every token the model sampled, including the
//! end-of-generation token that ended it, as llama.cpp and vLLM count them; so
//! `completion_tokens <= max_tokens` always holds and billed tokens equal decoded tokens.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::mpsc;
use wattmesh_proto::openai::{FinishReason, StopSequences, Usage};

use crate::detok::{Step, TextStream};
use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::tokenizer::GgufTokenizer;

/// OpenAI accepts at most this many stop sequences.
const MAX_STOPS: usize = 4;
/// How many events may wait for a slow client before the worker blocks.
const EVENT_BUFFER: usize = 64;

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

/// What a job reports back, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Text(String),
    Done { finish: FinishReason, usage: Usage },
    Failed(String),
}

struct Job {
    prompt: Vec<u32>,
    params: GenParams,
    events: mpsc::Sender<GenEvent>,
    queued_at: Instant,
}

/// A handle to a replica's generation worker; the worker ends when the last handle drops.
pub struct Generator {
    jobs: std_mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl Generator {
    /// Starts the worker thread that owns `weights`.
    pub fn spawn(
        name: &str,
        weights: ModelWeights,
        tokenizer: Arc<GgufTokenizer>,
        eos: Vec<u32>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let worker = Worker {
            weights,
            tokenizer,
            eos,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name(format!("gen-{name}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Io {
                path: "generation thread".into(),
                source: e,
            })?;
        Ok(Self { jobs, metrics })
    }

    /// Queues a generation; events arrive on the returned receiver. Dropping the receiver
    /// cancels the job.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: GenParams,
    ) -> Result<mpsc::Receiver<GenEvent>, EngineError> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        self.metrics.queued();
        let job = Job {
            prompt,
            params,
            events: tx,
            queued_at: Instant::now(),
        };
        if self.jobs.send(job).is_err() {
            self.metrics.dequeued();
            return Err(EngineError::Unavailable);
        }
        Ok(rx)
    }
}

/// The state the worker thread owns.
struct Worker {
    weights: ModelWeights,
    tokenizer: Arc<GgufTokenizer>,
    eos: Vec<u32>,
    metrics: Arc<Metrics>,
}

/// Why a job ended without a `Done`.
enum Abort {
    /// The client went away.
    Cancelled,
    Model(candle_core::Error),
}

impl From<candle_core::Error> for Abort {
    fn from(e: candle_core::Error) -> Self {
        Abort::Model(e)
    }
}

impl Worker {
    fn run(self, jobs: std_mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            if job.events.is_closed() {
                self.metrics.dequeued();
                continue;
            }
            self.metrics.started();
            // Counters are settled before `Done` goes out, so a client that got its answer
            // sees this request finished in `/metrics`.
            match self.generate(&job) {
                Ok((finish, usage)) => {
                    self.metrics.finished(Some(finish));
                    let _ = job.events.blocking_send(GenEvent::Done { finish, usage });
                }
                Err(Abort::Cancelled) => self.metrics.finished(None),
                Err(Abort::Model(e)) => {
                    tracing::error!(error = %e, "generation failed");
                    self.metrics.finished(None);
                    let _ = job.events.blocking_send(GenEvent::Failed(e.to_string()));
                }
            }
        }
    }

    /// Runs one job up to (not including) its `Done` event.
    fn generate(&self, job: &Job) -> Result<(FinishReason, Usage), Abort> {
        let send = |ev: GenEvent| job.events.blocking_send(ev).map_err(|_| Abort::Cancelled);
        let device = Device::Cpu;
        let mut model = self.weights.clone();
        let prompt_len = job.prompt.len();
        self.metrics.add_prompt_tokens(prompt_len as u64);

        let input = Tensor::new(job.prompt.as_slice(), &device)?.unsqueeze(0)?;
        let mut logits = model.forward(&input, 0)?.squeeze(0)?;
        let mut sampler =
            LogitsProcessor::from_sampling(job.params.seed, job.params.sampling.clone());
        let mut text = TextStream::new(job.params.stops.clone());
        let mut generated = 0usize;
        let finish = loop {
            if job.events.is_closed() {
                self.metrics.add_generation_tokens(generated as u64);
                return Err(Abort::Cancelled);
            }
            let token = sampler.sample(&logits)?;
            generated += 1;
            if generated == 1 {
                self.metrics.observe_ttft(job.queued_at.elapsed());
            }
            if self.eos.contains(&token) {
                break FinishReason::Stop;
            }
            match text.push(self.tokenizer.token_bytes(token)) {
                Step::Continue(piece) => {
                    if !piece.is_empty() {
                        send(GenEvent::Text(piece))?;
                    }
                }
                Step::Stop(piece) => {
                    if !piece.is_empty() {
                        send(GenEvent::Text(piece))?;
                    }
                    break FinishReason::Stop;
                }
            }
            if generated >= job.params.max_new_tokens {
                break FinishReason::Length;
            }
            let input = Tensor::new(&[token], &device)?.unsqueeze(0)?;
            logits = model
                .forward(&input, prompt_len + generated - 1)?
                .squeeze(0)?;
        };
        self.metrics.add_generation_tokens(generated as u64);
        let rest = text.finish();
        if !rest.is_empty() {
            send(GenEvent::Text(rest))?;
        }
        Ok((finish, Usage::new(prompt_len as u32, generated as u32)))
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
