//! The batching worker of a chat replica: one thread that owns the model and the KV cache
//! and runs steps for as long as there is work.
//!
//! Each turn of the loop takes in new requests, drops the ones whose client went away
//! (their KV blocks go back to the pool before the next step), asks the [`Scheduler`] for
//! the next step, runs the forward pass over all of it at once, samples a token for every
//! sequence that reached the end of its tokens, and streams the text out. Generation is
//! CPU-bound, so it runs on this thread and the replica's compute pool, never on the async
//! runtime.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::mpsc;
use wattmesh_proto::openai::{FinishReason, Usage};

use crate::detok::{Step as TextStep, TextStream};
use crate::error::EngineError;
use crate::generate::{Admission, GenEvent, GenParams, Generator, Request};
use crate::kernels::SpinPool;
use crate::llama::{KvCache, LlamaModel, Scratch, Step};
use crate::metrics::Metrics;
use crate::options::EngineOptions;
use crate::sampler::Sampler;
use crate::scheduler::{Limits, Scheduler, Seq};
use crate::tokenizer::GgufTokenizer;

/// What the worker keeps for each request besides its tokens.
struct Job {
    params: GenParams,
    sampler: Sampler,
    text: TextStream,
    events: mpsc::UnboundedSender<GenEvent>,
    queued_at: Instant,
    started_at: Option<Instant>,
    last_token_at: Option<Instant>,
    prompt_len: usize,
    generated: usize,
}

impl Job {
    fn send(&self, event: GenEvent) {
        // A closed channel means the client left; the next turn drops the sequence.
        let _ = self.events.send(event);
    }

    /// Takes a sampled token; `Some` when it ends the request.
    fn on_token(
        &mut self,
        token: u32,
        eos: &[u32],
        tokenizer: &GgufTokenizer,
        metrics: &Metrics,
    ) -> Option<FinishReason> {
        self.generated += 1;
        metrics.add_generation_tokens(1);
        let now = Instant::now();
        match self.last_token_at {
            None => metrics.observe_ttft(now - self.queued_at),
            Some(last) => metrics.observe_itl(now - last),
        }
        self.last_token_at = Some(now);
        if eos.contains(&token) {
            return Some(FinishReason::Stop);
        }
        match self.text.push(tokenizer.token_bytes(token)) {
            TextStep::Continue(piece) => {
                if !piece.is_empty() {
                    self.send(GenEvent::Text(piece));
                }
            }
            TextStep::Stop(piece) => {
                if !piece.is_empty() {
                    self.send(GenEvent::Text(piece));
                }
                return Some(FinishReason::Stop);
            }
        }
        (self.generated >= self.params.max_new_tokens).then_some(FinishReason::Length)
    }
}

/// Starts the worker of a chat replica and returns the handle that feeds it.
pub(crate) fn spawn(
    name: &str,
    model: LlamaModel,
    tokenizer: Arc<GgufTokenizer>,
    eos: Vec<u32>,
    metrics: Arc<Metrics>,
    options: &EngineOptions,
) -> Result<Generator, EngineError> {
    let kv = KvCache::new(
        model.config.layers,
        model.config.kv_dim(),
        options.kv_cache_bytes,
    );
    let capacity_tokens = kv.capacity_tokens();
    let thread_error = |e: std::io::Error| EngineError::Io {
        path: "generation thread".into(),
        source: e,
    };
    let prefix = name.chars().take(8).collect::<String>();
    let pool = Arc::new(SpinPool::new(options.threads, &prefix).map_err(thread_error)?);
    let admission = Arc::new(Admission::default());
    let (requests, rx) = std_mpsc::channel::<Request>();
    let worker = Worker {
        model,
        kv,
        scheduler: Scheduler::new(Limits {
            max_running: options.max_running,
            step_tokens: options.step_tokens,
        }),
        tokenizer,
        eos,
        metrics: metrics.clone(),
        admission: admission.clone(),
        scratch: Scratch::new(pool),
        step: StepBuffers::default(),
    };
    std::thread::Builder::new()
        .name(format!("gen-{name}"))
        .spawn(move || worker.run(rx))
        .map_err(thread_error)?;
    tracing::info!(
        model = name,
        threads = options.threads,
        kv_cache_tokens = capacity_tokens,
        max_running = options.max_running,
        "batching worker started"
    );
    Ok(Generator {
        requests,
        admission,
        metrics,
        max_queued: options.max_waiting,
        max_running: options.max_running,
        capacity_tokens,
    })
}

/// The inputs of one step, reused between steps.
#[derive(Default)]
struct StepBuffers {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    seq_of: Vec<usize>,
    logit_rows: Vec<usize>,
}

struct Worker {
    model: LlamaModel,
    kv: KvCache,
    scheduler: Scheduler<Job>,
    tokenizer: Arc<GgufTokenizer>,
    eos: Vec<u32>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    scratch: Scratch,
    step: StepBuffers,
}

impl Worker {
    fn run(mut self, requests: std_mpsc::Receiver<Request>) {
        loop {
            if self.scheduler.is_idle() {
                self.publish();
                match requests.recv() {
                    Ok(r) => self.accept(r),
                    // Every handle is gone and nothing is left to finish.
                    Err(_) => return,
                }
            }
            while let Ok(r) = requests.try_recv() {
                self.accept(r);
            }
            self.drop_cancelled();
            // A failed step (or a bug that panics in it) fails the requests it ran, not the
            // replica: the worker goes on with the next ones.
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "generation step failed");
                    self.fail_running(&e.to_string());
                }
                Err(_) => {
                    tracing::error!("generation step panicked");
                    self.fail_running("internal error in the generation step");
                }
            }
            self.publish();
        }
    }

    fn accept(&mut self, r: Request) {
        let job = Job {
            sampler: Sampler::new(r.params.sampling.clone(), r.params.seed),
            text: TextStream::new(r.params.stops.clone()),
            params: r.params,
            events: r.events,
            queued_at: r.queued_at,
            started_at: None,
            last_token_at: None,
            prompt_len: r.prompt.len(),
            generated: 0,
        };
        self.scheduler.push(r.prompt, r.priority, job);
    }

    /// Removes requests whose client went away; their blocks return to the pool now.
    fn drop_cancelled(&mut self) {
        let gone = self
            .scheduler
            .remove_where(&mut self.kv, |s| s.payload.events.is_closed());
        for seq in gone {
            if !seq.admitted_once {
                self.admission.queued.fetch_sub(1, Ordering::AcqRel);
            }
            self.metrics
                .request_done(None, seq.payload.queued_at.elapsed());
        }
    }

    /// Plans and runs one step.
    fn step(&mut self) -> Result<(), EngineError> {
        let plan = self.scheduler.plan(&mut self.kv);
        self.metrics.add_preemptions(plan.preempted as u64);
        let now = Instant::now();
        for id in &plan.admitted {
            self.admission.queued.fetch_sub(1, Ordering::AcqRel);
            if let Some(seq) = self
                .scheduler
                .running_mut()
                .iter_mut()
                .find(|s| s.id == *id)
            {
                seq.payload.started_at = Some(now);
                self.metrics
                    .add_prompt_tokens(seq.payload.prompt_len as u64);
            }
        }
        for seq in plan.rejected {
            self.admission.queued.fetch_sub(1, Ordering::AcqRel);
            let message = format!(
                "the prompt needs {} tokens of KV cache; this replica holds {}",
                seq.tokens.len(),
                self.kv.capacity_tokens()
            );
            seq.payload.send(GenEvent::Failed(message));
            self.metrics
                .request_done(None, seq.payload.queued_at.elapsed());
        }
        for seq in plan.exhausted {
            self.complete(seq, FinishReason::Length);
        }
        if plan.planned.is_empty() {
            return Ok(());
        }

        let b = &mut self.step;
        b.tokens.clear();
        b.positions.clear();
        b.seq_of.clear();
        b.logit_rows.clear();
        let running = self.scheduler.running();
        let mut tables: Vec<&[u32]> = Vec::with_capacity(plan.planned.len());
        for (k, p) in plan.planned.iter().enumerate() {
            let seq = &running[p.index];
            tables.push(&seq.cache.blocks);
            b.tokens
                .extend_from_slice(&seq.tokens[p.start..p.start + p.len]);
            b.positions.extend(p.start..p.start + p.len);
            b.seq_of.extend(std::iter::repeat_n(k, p.len));
            if p.sample {
                b.logit_rows.push(b.tokens.len() - 1);
            }
        }
        let step = Step {
            tokens: &b.tokens,
            positions: &b.positions,
            seq_of: &b.seq_of,
            tables: &tables,
            logit_rows: &b.logit_rows,
        };
        let logits = self.model.forward(&mut self.kv, &step, &mut self.scratch)?;
        self.metrics.observe_batch(plan.planned.len());

        let vocab = self.model.vocab;
        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        let mut row = 0;
        let running = self.scheduler.running_mut();
        for p in &plan.planned {
            let seq = &mut running[p.index];
            seq.cache.len += p.len;
            if !p.sample {
                continue;
            }
            let token = seq
                .payload
                .sampler
                .sample(&logits[row * vocab..(row + 1) * vocab]);
            row += 1;
            seq.tokens.push(token);
            if let Some(reason) =
                seq.payload
                    .on_token(token, &self.eos, &self.tokenizer, &self.metrics)
            {
                finished.push((p.index, reason));
            }
        }
        // Highest index first, so the remaining indices stay valid.
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (index, reason) in finished {
            let seq = self.scheduler.finish(&mut self.kv, index);
            self.complete(seq, reason);
        }
        Ok(())
    }

    /// Ends a request that left the batch: the rest of its text, then `Done`. The gauges
    /// are settled first, so a client holding its answer sees it finished in `/metrics`.
    fn complete(&self, seq: Seq<Job>, reason: FinishReason) {
        let Seq {
            mut tokens,
            payload: mut job,
            ..
        } = seq;
        let job = &mut job;
        let rest = job.text.finish();
        if !rest.is_empty() {
            job.send(GenEvent::Text(rest));
        }
        self.publish();
        self.metrics
            .request_done(Some(reason), job.queued_at.elapsed());
        if let Some(started) = job.started_at {
            self.admission.record_run(started.elapsed().as_secs_f64());
        }
        let tokens = tokens.split_off(job.prompt_len.min(tokens.len()));
        job.send(GenEvent::Done {
            finish: reason,
            usage: Usage::new(job.prompt_len as u32, job.generated as u32),
            tokens,
        });
    }

    /// Fails every running request (the forward pass itself failed).
    fn fail_running(&mut self, message: &str) {
        let gone = self
            .scheduler
            .remove_where(&mut self.kv, |s| s.admitted_once);
        for seq in gone {
            seq.payload.send(GenEvent::Failed(message.to_owned()));
            self.metrics
                .request_done(None, seq.payload.queued_at.elapsed());
        }
    }

    fn publish(&self) {
        self.metrics
            .set_queues(self.scheduler.waiting_len(), self.scheduler.running().len());
        self.metrics.set_kv_usage(self.kv.usage());
    }
}
