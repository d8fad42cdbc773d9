//! Picking the next token from logits: greedy, or temperature with optional nucleus (top-p)
//! sampling from a per-request seeded generator, so a seed reproduces a completion.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (temperature 0).
    ArgMax,
    /// From the whole distribution at `temperature`.
    All { temperature: f64 },
    /// From the smallest set of most likely tokens whose mass reaches `p`.
    TopP { p: f64, temperature: f64 },
}

/// The sampler of one request.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
    /// (probability, token) pairs, reused between tokens.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
            candidates: Vec::new(),
        }
    }

    /// The next token for `logits` (one float per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let (temperature, p) = match self.sampling {
            Sampling::ArgMax => return argmax(logits),
            Sampling::All { temperature } => (temperature as f32, 1.0),
            Sampling::TopP { p, temperature } => (temperature as f32, p as f32),
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.candidates.clear();
        let mut total = 0f32;
        for (id, &l) in logits.iter().enumerate() {
            let w = ((l - max) / temperature).exp();
            total += w;
            self.candidates.push((w, id as u32));
        }
        let mut mass = total;
        if p < 1.0 {
            self.candidates
                .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut kept = 0f32;
            let mut keep = self.candidates.len();
            for (i, (w, _)) in self.candidates.iter().enumerate() {
                kept += w;
                if kept >= p * total {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            mass = kept;
        }
        let mut target = self.rng.random::<f32>() * mass;
        for &(w, id) in &self.candidates {
            target -= w;
            if target <= 0.0 {
                return id;
            }
        }
        self.candidates.last().map_or(0, |c| c.1)
    }
}

/// The index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(Sampling::ArgMax, 1);
        assert_eq!(s.sample(&[0.0, 0.0, 5.0]), 2);
    }

    #[test]
    fn a_seed_reproduces_and_top_p_cuts_the_tail() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32).collect();
        let draw = |seed| {
            let mut s = Sampler::new(Sampling::All { temperature: 1.0 }, seed);
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        // Only tokens with the top logit (6.0) carry mass ≥ 0.5 of the total at low p.
        let mut s = Sampler::new(
            Sampling::TopP {
                p: 0.3,
                temperature: 0.5,
            },
            3,
        );
        for _ in 0..50 {
            assert_eq!(logits[s.sample(&logits) as usize], 6.0);
        }
    }
}
