//! Continuous batching: which sequences run in the next step, and how many of their tokens.
//!
//! Policy, in the order it is applied each step:
//! 1. **Admission**: waiting requests join the running batch in priority order, first come
//!    first served within a class, while the batch has room and the KV cache has blocks for
//!    the whole prompt. The head of the queue is never skipped for a smaller request behind
//!    it: FCFS means a large prompt is not starved.
//! 2. **Decode first**: every running sequence with one token to feed gets it into the step,
//!    growing its cache by a block when it crosses a block boundary. If the pool is empty,
//!    the lowest-priority, latest-arrived running sequence is preempted: its blocks are freed
//!    and it goes back to the front of its queue, to be recomputed from its tokens later
//!    (vLLM's recompute preemption).
//! 3. **Chunked prefill**: the rest of the step's token budget goes to prompts, in admission
//!    order, a chunk at a time, so a long prompt never stalls the running streams for more
//!    than one step.
//!
//! The scheduler is generic over what a sequence carries (`P`), so this policy is tested
//! without a model.

use std::collections::VecDeque;

use crate::llama::{KvCache, SeqCache};

/// A request's scheduling class; the gateway passes it, `Normal` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    High = 0,
    #[default]
    Normal = 1,
    Low = 2,
}

impl Priority {
    /// Parses a class name; OpenAI's `service_tier` names map onto the same classes.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" | "priority" | "interactive" => Some(Priority::High),
            "normal" | "default" | "auto" => Some(Priority::Normal),
            "low" | "flex" | "batch" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// A sequence: its tokens so far (prompt, then generated) and its share of the cache.
#[derive(Debug)]
pub struct Seq<P> {
    pub id: u64,
    pub tokens: Vec<u32>,
    pub cache: SeqCache,
    pub priority: Priority,
    /// Whether it ever ran (a preempted sequence waits again but was admitted once).
    pub admitted_once: bool,
    pub payload: P,
}

impl<P> Seq<P> {
    /// Tokens not yet in the cache: the prompt (or what is left of it), or the last sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.cache.len
    }
}

/// How big a step may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sequences in the running batch at most.
    pub max_running: usize,
    /// Tokens in one step at most (decode tokens plus prefill chunks).
    pub step_tokens: usize,
}

/// One sequence's part of a step: `len` tokens from `tokens[start..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Index into [`Scheduler::running`].
    pub index: usize,
    pub start: usize,
    pub len: usize,
    /// Whether the step ends at the sequence's last token, so a next token is sampled.
    pub sample: bool,
}

/// What planning a step decided.
#[derive(Debug)]
pub struct Plan<P> {
    pub planned: Vec<Planned>,
    /// Requests whose prompt cannot fit even an empty cache.
    pub rejected: Vec<Seq<P>>,
    /// Sequences that need another block with nothing left to preempt: they end here.
    pub exhausted: Vec<Seq<P>>,
    /// Sequences admitted for the first time in this step (they leave the request queue).
    pub admitted: Vec<u64>,
    pub preempted: usize,
}

/// The waiting queues and the running batch of one replica.
#[derive(Debug)]
pub struct Scheduler<P> {
    waiting: [VecDeque<Seq<P>>; 3],
    running: Vec<Seq<P>>,
    limits: Limits,
    next_id: u64,
}

impl<P> Scheduler<P> {
    pub fn new(limits: Limits) -> Self {
        Self {
            waiting: Default::default(),
            running: Vec::new(),
            limits,
            next_id: 0,
        }
    }

    /// Queues a request at the back of its class; returns its id.
    pub fn push(&mut self, tokens: Vec<u32>, priority: Priority, payload: P) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting[priority as usize].push_back(Seq {
            id,
            tokens,
            cache: SeqCache::default(),
            priority,
            admitted_once: false,
            payload,
        });
        id
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.iter().all(VecDeque::is_empty)
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    pub fn running(&self) -> &[Seq<P>] {
        &self.running
    }

    pub fn running_mut(&mut self) -> &mut [Seq<P>] {
        &mut self.running
    }

    /// Removes every sequence (running or waiting) for which `keep` is false, giving its
    /// blocks back at once; returns them.
    pub fn remove_where(
        &mut self,
        kv: &mut KvCache,
        mut gone: impl FnMut(&Seq<P>) -> bool,
    ) -> Vec<Seq<P>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if gone(&self.running[i]) {
                let mut seq = self.running.remove(i);
                kv.release(&mut seq.cache);
                out.push(seq);
            } else {
                i += 1;
            }
        }
        for queue in &mut self.waiting {
            let mut kept = VecDeque::with_capacity(queue.len());
            for mut seq in queue.drain(..) {
                if gone(&seq) {
                    kv.release(&mut seq.cache);
                    out.push(seq);
                } else {
                    kept.push_back(seq);
                }
            }
            *queue = kept;
        }
        out
    }

    /// Takes running sequence `index` out of the batch (it finished), freeing its blocks.
    pub fn finish(&mut self, kv: &mut KvCache, index: usize) -> Seq<P> {
        let mut seq = self.running.remove(index);
        kv.release(&mut seq.cache);
        seq
    }

    /// Plans the next step; grows the caches of the planned sequences to fit it.
    pub fn plan(&mut self, kv: &mut KvCache) -> Plan<P> {
        let mut plan = Plan {
            planned: Vec::new(),
            rejected: Vec::new(),
            exhausted: Vec::new(),
            admitted: Vec::new(),
            preempted: 0,
        };
        self.admit(kv, &mut plan);

        // Decode tokens first; `ids` keeps the planned sequences across removals.
        let mut budget = self.limits.step_tokens;
        let mut decode: Vec<u64> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if self.running[i].pending() != 1 {
                i += 1;
                continue;
            }
            let need = self.running[i].cache.len + 1;
            let seq_id = self.running[i].id;
            let mut grown = kv.grow(&mut self.running[i].cache, need);
            while !grown {
                let Some(victim) = self.victim(&decode) else {
                    break;
                };
                let victim_id = self.running[victim].id;
                if victim_id == seq_id && self.running.len() == 1 {
                    // Alone and out of blocks: preempting would only bring it back to this.
                    break;
                }
                self.preempt(kv, victim);
                plan.preempted += 1;
                if victim_id == seq_id {
                    break;
                }
                let Some(at) = self.running.iter().position(|s| s.id == seq_id) else {
                    break;
                };
                i = at;
                grown = kv.grow(&mut self.running[i].cache, need);
            }
            match self.running.iter().position(|s| s.id == seq_id) {
                Some(at) if grown => {
                    decode.push(seq_id);
                    budget -= 1;
                    i = at + 1;
                }
                Some(at) => {
                    // Nothing left to preempt: this sequence has the whole pool and needs more.
                    plan.exhausted.push(self.finish(kv, at));
                    i = at;
                }
                None => {} // preempted itself; `i` now points at the next sequence
            }
        }

        // Prefill chunks with what is left of the budget.
        let mut chunks: Vec<(u64, usize)> = Vec::new();
        for seq in &mut self.running {
            let pending = seq.pending();
            if pending <= 1 || budget == 0 {
                continue;
            }
            let len = pending.min(budget);
            // Blocks for the whole prompt were taken at admission.
            let need = seq.cache.len + len;
            if kv.grow(&mut seq.cache, need) {
                chunks.push((seq.id, len));
                budget -= len;
            }
        }

        for (index, seq) in self.running.iter().enumerate() {
            let start = seq.cache.len;
            if decode.contains(&seq.id) {
                plan.planned.push(Planned {
                    index,
                    start,
                    len: 1,
                    sample: true,
                });
            } else if let Some(&(_, len)) = chunks.iter().find(|(id, _)| *id == seq.id) {
                plan.planned.push(Planned {
                    index,
                    start,
                    len,
                    sample: start + len == seq.tokens.len(),
                });
            }
        }
        plan
    }

    /// Moves waiting sequences into the batch while there is room.
    fn admit(&mut self, kv: &mut KvCache, plan: &mut Plan<P>) {
        while self.running.len() < self.limits.max_running {
            let Some(queue) = self.waiting.iter_mut().find(|q| !q.is_empty()) else {
                return;
            };
            let Some(head) = queue.front_mut() else {
                return;
            };
            let tokens = head.tokens.len();
            if !kv.grow(&mut head.cache, tokens) {
                if self.running.is_empty() && KvCache::blocks_for(tokens) > kv.free_blocks() {
                    // Even an idle replica cannot hold it: waiting would be forever. A
                    // sequence that already ran ends with what it has.
                    if let Some(seq) = queue.pop_front() {
                        match seq.admitted_once {
                            true => plan.exhausted.push(seq),
                            false => plan.rejected.push(seq),
                        }
                    }
                    continue;
                }
                return;
            }
            if let Some(mut seq) = queue.pop_front() {
                if !seq.admitted_once {
                    seq.admitted_once = true;
                    plan.admitted.push(seq.id);
                }
                self.running.push(seq);
            }
        }
    }

    /// The sequence to preempt: lowest priority, then latest arrival; never one already
    /// planned for this step.
    fn victim(&self, planned: &[u64]) -> Option<usize> {
        self.running
            .iter()
            .enumerate()
            .filter(|(_, s)| !planned.contains(&s.id))
            .max_by_key(|(_, s)| (s.priority, s.id))
            .map(|(i, _)| i)
    }

    /// Frees a running sequence's blocks and queues it again at the front of its class.
    fn preempt(&mut self, kv: &mut KvCache, index: usize) {
        let mut seq = self.running.remove(index);
        kv.release(&mut seq.cache);
        self.waiting[seq.priority as usize].push_front(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::kv::BLOCK_TOKENS;

    /// A cache of `blocks` blocks.
    fn cache(blocks: usize) -> KvCache {
        KvCache::new(1, 1, KvCache::bytes_per_token(1, 1) * BLOCK_TOKENS * blocks)
    }

    fn limits(max_running: usize, step_tokens: usize) -> Limits {
        Limits {
            max_running,
            step_tokens,
        }
    }

    /// Applies a plan as the worker does: positions advance, sampled sequences get a token.
    fn run(s: &mut Scheduler<&'static str>, kv: &mut KvCache) -> Vec<(&'static str, usize)> {
        let plan = s.plan(kv);
        let mut out = Vec::new();
        for p in &plan.planned {
            let seq = &mut s.running_mut()[p.index];
            seq.cache.len += p.len;
            if p.sample {
                seq.tokens.push(0);
            }
            out.push((seq.payload, p.len));
        }
        out
    }

    #[test]
    fn long_prompts_are_chunked_and_decodes_go_first() {
        let mut kv = cache(64);
        let mut s = Scheduler::new(limits(8, 32));
        s.push(vec![1; 4], Priority::Normal, "short");
        assert_eq!(run(&mut s, &mut kv), [("short", 4)]);
        s.push(vec![1; 70], Priority::Normal, "long");
        // The short one decodes every step; the long prompt takes the rest of the budget.
        assert_eq!(run(&mut s, &mut kv), [("short", 1), ("long", 31)]);
        assert_eq!(run(&mut s, &mut kv), [("short", 1), ("long", 31)]);
        assert_eq!(run(&mut s, &mut kv), [("short", 1), ("long", 8)]);
        assert_eq!(run(&mut s, &mut kv), [("short", 1), ("long", 1)]);
    }

    #[test]
    fn fcfs_within_a_class_and_higher_classes_first() {
        let mut kv = cache(64);
        let mut s = Scheduler::new(limits(2, 64));
        s.push(vec![1; 2], Priority::Low, "low");
        s.push(vec![1; 2], Priority::Normal, "n1");
        s.push(vec![1; 2], Priority::Normal, "n2");
        s.push(vec![1; 2], Priority::High, "high");
        let names: Vec<_> = run(&mut s, &mut kv).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["high", "n1"]);
        assert_eq!(s.waiting_len(), 2);
    }

    #[test]
    fn admission_stops_at_the_memory_bound_and_resumes_when_blocks_free() {
        let mut kv = cache(4);
        let mut s = Scheduler::new(limits(8, 256));
        s.push(vec![1; 3 * BLOCK_TOKENS], Priority::Normal, "a");
        s.push(vec![1; 2 * BLOCK_TOKENS], Priority::Normal, "b");
        s.push(vec![1; 2], Priority::Normal, "c");
        // a takes 3 of 4 blocks; b needs 2 and blocks the line; c may not jump ahead.
        assert_eq!(run(&mut s, &mut kv), [("a", 3 * BLOCK_TOKENS)]);
        assert_eq!(s.waiting_len(), 2);
        let gone = s.remove_where(&mut kv, |seq| seq.payload == "a");
        assert_eq!(gone.len(), 1);
        assert_eq!(kv.free_blocks(), 4);
        assert_eq!(run(&mut s, &mut kv), [("b", 2 * BLOCK_TOKENS), ("c", 2)]);
    }

    #[test]
    fn a_full_pool_preempts_the_latest_lowest_priority_sequence() {
        let mut kv = cache(2);
        let mut s = Scheduler::new(limits(8, 256));
        s.push(vec![1; BLOCK_TOKENS - 1], Priority::Normal, "old");
        s.push(vec![1; BLOCK_TOKENS - 1], Priority::Normal, "new");
        assert_eq!(run(&mut s, &mut kv).len(), 2);
        // Both are at 15 tokens + 1 sampled: the next decode of each crosses into a new block.
        assert_eq!(run(&mut s, &mut kv), [("old", 1), ("new", 1)]);
        let plan = s.plan(&mut kv);
        assert_eq!(plan.preempted, 1);
        assert_eq!(s.running().len(), 1);
        assert_eq!(s.running()[0].payload, "old");
        assert_eq!(s.waiting_len(), 1);
    }

    #[test]
    fn a_prompt_larger_than_the_pool_is_rejected_not_queued_forever() {
        let mut kv = cache(2);
        let mut s = Scheduler::new(limits(8, 256));
        s.push(vec![1; 3 * BLOCK_TOKENS], Priority::Normal, "huge");
        s.push(vec![1; 2], Priority::Normal, "small");
        let plan = s.plan(&mut kv);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.planned.len(), 1);
        assert_eq!(s.running()[0].payload, "small");
    }

    #[test]
    fn a_lone_sequence_that_fills_the_pool_is_exhausted() {
        let mut kv = cache(1);
        let mut s = Scheduler::new(limits(8, 256));
        s.push(vec![1; BLOCK_TOKENS], Priority::Normal, "alone");
        assert_eq!(run(&mut s, &mut kv), [("alone", BLOCK_TOKENS)]);
        let plan = s.plan(&mut kv);
        assert_eq!(plan.exhausted.len(), 1);
        assert!(s.is_idle());
        assert_eq!(kv.free_blocks(), 1);
    }

    #[test]
    fn priorities_parse_from_class_and_service_tier_names() {
        assert_eq!(Priority::parse("priority"), Some(Priority::High));
        assert_eq!(Priority::parse(" Flex "), Some(Priority::Low));
        assert_eq!(Priority::parse("auto"), Some(Priority::Normal));
        assert_eq!(Priority::parse("urgent"), None);
    }
}
