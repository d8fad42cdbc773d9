//! How a chat replica sizes itself: threads, KV-cache budget, batch and queue bounds.
//!
//! Defaults suit the small models `wattmesh up` serves on a laptop-class CPU; each can be
//! overridden from the environment of the process that loads the replica (the agent),
//! which is how operators and benchmarks tune a replica without a new flag per knob.

use crate::error::EngineError;

/// Tuning of one chat replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Compute threads (`WATTMESH_THREADS`); default: the CPUs available.
    pub threads: usize,
    /// KV-cache budget in bytes (`WATTMESH_KV_CACHE_MIB`).
    pub kv_cache_bytes: usize,
    /// Sequences decoded together at most (`WATTMESH_MAX_RUNNING`).
    pub max_running: usize,
    /// Requests that may wait for the batch before new ones get 503 (`WATTMESH_MAX_WAITING`).
    pub max_waiting: usize,
    /// Tokens per step at most, decode tokens plus prefill chunks (`WATTMESH_STEP_TOKENS`).
    pub step_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kv_cache_bytes: 256 << 20,
            max_running: 32,
            max_waiting: 128,
            step_tokens: 256,
        }
    }
}

impl EngineOptions {
    /// The defaults, overridden by whichever `WATTMESH_*` variables are set.
    pub fn from_env() -> Result<Self, EngineError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Self::from_env`], reading variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EngineError> {
        let mut o = Self::default();
        let read = |key: &'static str, into: &mut usize, scale: usize| -> Result<(), EngineError> {
            if let Some(v) = get(key) {
                let n: usize = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    EngineError::Option(format!("{key}={v:?} is not a positive integer"))
                })?;
                *into = n.saturating_mul(scale);
            }
            Ok(())
        };
        read("WATTMESH_THREADS", &mut o.threads, 1)?;
        read("WATTMESH_KV_CACHE_MIB", &mut o.kv_cache_bytes, 1 << 20)?;
        read("WATTMESH_MAX_RUNNING", &mut o.max_running, 1)?;
        read("WATTMESH_MAX_WAITING", &mut o.max_waiting, 1)?;
        read("WATTMESH_STEP_TOKENS", &mut o.step_tokens, 1)?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_and_bad_values_are_errors() {
        let o = EngineOptions::from_lookup(|k| match k {
            "WATTMESH_KV_CACHE_MIB" => Some("64".into()),
            "WATTMESH_MAX_WAITING" => Some(" 3 ".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((o.kv_cache_bytes, o.max_waiting), (64 << 20, 3));
        assert_eq!(o.max_running, EngineOptions::default().max_running);
        for bad in ["0", "-1", "lots", ""] {
            let r = EngineOptions::from_lookup(|k| (k == "WATTMESH_THREADS").then(|| bad.into()));
            assert!(r.is_err(), "{bad:?}");
        }
    }
}
