//! A small pool of compute threads that spin between jobs, for the many short parallel
//! regions of a forward pass (about 150 per decoded token, each tens of microseconds).
//!
//! A general-purpose pool puts idle threads to sleep within microseconds, and waking one
//! costs about as much as the work it would do, so a decode step ran mostly on one core
//! (measured: BENCHMARKS.md). Here idle workers keep polling for `SPIN` before they park,
//! which covers the gaps between the regions of a step; between steps they park. Polling
//! yields the core after a few pauses, so an oversubscribed machine (several replicas on two
//! cores under `wattmesh up`) degrades gracefully instead of spinning against itself.
//!
//! [`SpinPool::run`] calls `task(i)` for every `i < tasks`, on the caller and the workers
//! together, and returns when all have returned. The borrowed closure is shared with the
//! workers through a raw pointer: the one unsafe part, sound because `run` does not return
//! (nor unwind) before every worker has let go of it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(500);

/// The job being run: a type- and lifetime-erased `&(dyn Fn(usize) + Sync)`.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and `run` keeps it alive while any worker may use it.
#[expect(
    unsafe_code,
    reason = "a borrowed closure shared with the pool's threads"
)]
unsafe impl Send for JobPtr {}

struct Shared {
    /// Bumped for every job; workers wait for it to change.
    generation: AtomicU64,
    job: Mutex<Option<JobPtr>>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not finished the current job.
    busy: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Workers waiting on `wake`; a job wakes them only if there are any, since a notify
    /// is a system call and most jobs find every worker still polling.
    parked: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

/// Compute threads for one replica; the caller of [`Self::run`] works too.
pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// `run` is not reentrant: a task must not start another job.
    running: AtomicBool,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl SpinPool {
    /// A pool of `threads` threads in all, the caller included (so `threads - 1` workers).
    pub fn new(threads: usize, name: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let shared = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(&shared))?,
            );
        }
        Ok(Self {
            shared,
            workers,
            running: AtomicBool::new(false),
        })
    }

    /// Threads that run tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `task(i)` for every `i` in `0..tasks` and returns when all are done. A panic in
    /// a task is re-raised here once every thread has stopped using `task`.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if self.workers.is_empty() || tasks == 1 || self.running.swap(true, Ordering::Acquire) {
            // No helpers, nothing to share, or called from inside a task: run inline.
            (0..tasks).for_each(task);
            return;
        }
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. The pointer is published below and every
        // worker drops it before decrementing `busy`; `Finish` (also on unwind) waits for
        // `busy` to reach zero before this function returns.
        #[expect(unsafe_code, reason = "see the SAFETY comment")]
        let job = JobPtr(unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(task)
        } as *const _);
        if let Ok(mut slot) = s.job.lock() {
            *slot = Some(job);
        }
        s.tasks.store(tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.workers.len(), Ordering::Relaxed);
        // SeqCst here and in the worker's parking: either the worker sees the new
        // generation before it waits, or this sees it parked and wakes it.
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0
            && let Ok(_guard) = s.park.lock()
        {
            s.wake.notify_all();
        }
        let finish = Finish { pool: self };
        claim(s, task);
        drop(finish);
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a compute task panicked");
        }
    }
}

/// Waits for the workers to let go of the job, even when the caller's own tasks unwind.
struct Finish<'a> {
    pool: &'a SpinPool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let s = &*self.pool.shared;
        let mut spins = 0u32;
        while s.busy.load(Ordering::Acquire) != 0 {
            relax(&mut spins);
        }
        if let Ok(mut slot) = s.job.lock() {
            *slot = None;
        }
        self.pool.running.store(false, Ordering::Release);
    }
}

/// Runs tasks of the current job until none is left.
fn claim(s: &Shared, task: &(dyn Fn(usize) + Sync)) {
    let tasks = s.tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            return;
        }
        task(i);
    }
}

/// One round of waiting: a CPU pause at first, then a yield, so that a thread we wait for
/// which lost its core (another process, another replica's pool) gets it back at once.
fn relax(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if *spins < PAUSES {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Pause instructions before waiting turns into yielding.
const PAUSES: u32 = 64;

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for a while, then park until the next job.
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spins.is_multiple_of(64) && started.elapsed() > SPIN {
                if let Ok(guard) = s.park.lock() {
                    s.parked.fetch_add(1, Ordering::SeqCst);
                    if s.generation.load(Ordering::SeqCst) == seen
                        && !s.stop.load(Ordering::Acquire)
                    {
                        let _ = s.wake.wait_timeout(guard, Duration::from_millis(100));
                    }
                    s.parked.fetch_sub(1, Ordering::SeqCst);
                }
            } else {
                relax(&mut spins);
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = s.job.lock().ok().and_then(|slot| *slot);
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: the caller of `run` keeps the closure alive until `busy` is zero, and
            // this worker decrements `busy` only after its last use of `ptr`.
            #[expect(unsafe_code, reason = "see the SAFETY comment")]
            let task = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| claim(s, task))).is_err() {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Ok(_guard) = self.shared.park.lock() {
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = SpinPool::new(3, "test").unwrap();
        for tasks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_still_works() {
        let pool = SpinPool::new(2, "test").unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "task 5"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn nested_runs_execute_inline() {
        let pool = SpinPool::new(2, "test").unwrap();
        let count = AtomicUsize::new(0);
        pool.run(4, &|_| {
            pool.run(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }
}
