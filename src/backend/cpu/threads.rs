//! Where the CPU backend's work runs, and how its threads wait between ops.
//!
//! Every op splits its work over rayon's pool. Two things made that slow when decoding,
//! where a step is some 300 ops of 20 us to 2 ms each:
//!
//! - **The caller outside the pool.** From the process's main thread, an op injects its
//!   job, wakes a worker and sleeps until the job is done: two wake-ups and two context
//!   switches per op, and a third thread on the cores. [`on_worker`] runs the whole
//!   command on a worker instead, which then works on its own share of each op.
//! - **Idle workers sleep.** A rayon worker that finds no work for about 30 yields goes
//!   to sleep, and the next op has to wake it: tens of microseconds in a VM, during which
//!   the caller works alone. On the 2-core reference machine the caller did 54% of each
//!   product's work instead of half. [`keep_warm`] sets the other workers polling for
//!   work (`rayon::yield_now`) for as long as work keeps coming, and until [`IDLE`]
//!   passes without any.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a warm worker keeps polling after the last work it found.
pub const IDLE: Duration = Duration::from_millis(2);

/// Whether the other workers are polling (set by [`keep_warm`], cleared by the last
/// poller to stop).
static WARM: AtomicBool = AtomicBool::new(false);

/// Run `f` on a worker of rayon's global pool and return what it returns. The pool is
/// built here first, with worker stacks as large as a main thread's (8 MiB), if nothing
/// has built it yet. Call it once, around the whole command (see `main`).
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // an error means the pool exists already: then it is used as it is
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(move |_| f())
}

/// Called as an op starts: when the caller is a worker of a pool of two or more and the
/// others are not already polling, set them polling for work until [`IDLE`] passes
/// without any. A relaxed load when they are; nothing at all from outside a pool (a
/// library caller on its own thread, a test).
pub fn keep_warm() {
    if WARM.load(Ordering::Relaxed) {
        return;
    }
    let Some(me) = rayon::current_thread_index() else {
        return;
    };
    let threads = rayon::current_num_threads();
    if threads < 2 || WARM.swap(true, Ordering::AcqRel) {
        return;
    }
    let left = Arc::new(AtomicUsize::new(threads - 1));
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == me {
            return;
        }
        poll();
        if left.fetch_sub(1, Ordering::AcqRel) == 1 {
            WARM.store(false, Ordering::Release);
        }
    });
}

/// Take the pool's pending work as it comes, until [`IDLE`] passes without any.
fn poll() {
    let mut last = Instant::now();
    loop {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last = Instant::now(),
            Some(rayon::Yield::Idle) => {
                std::hint::spin_loop();
                if last.elapsed() >= IDLE {
                    return;
                }
            }
            None => return,
        }
    }
}

/// Run `f(0)` .. `f(n - 1)` over the pool's threads, each index once, and return when all
/// have run. Threads claim indices in turn, so a thread that arrives late takes fewer.
/// The caller waits for the last index in flight elsewhere by polling, never by going
/// to sleep, so no wake-up is ever on the op's critical path (a rayon join can sleep
/// there). Serial for fewer than 2 indices or threads. A panic in `f` reaches the caller
/// once the other threads are done.
pub fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads();
    if n < 2 || threads < 2 {
        (0..n).for_each(f);
        return;
    }
    keep_warm();
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    // counts an index as finished even when `f` panics, so the wait below ends
    struct Finished<'a>(&'a AtomicUsize);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return;
        }
        let _done = Finished(&finished);
        f(i);
    };
    rayon::scope(|s| {
        for _ in 1..threads.min(n) {
            s.spawn(|_| work());
        }
        work();
        // every index is claimed: those still running run on threads that are awake
        let mut spins = 0u32;
        while finished.load(Ordering::Acquire) < n {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    });
}

/// [`par_for`] over `0..n` in runs of `per` consecutive indices (the last one shorter):
/// `f(run)` per task, for work items too small to be a task each.
pub fn par_runs(n: usize, per: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let per = per.max(1);
    par_for(n.div_ceil(per), |i| f(i * per..n.min((i + 1) * per)));
}

/// [`par_for`] collecting `f(i)` in index order.
pub fn par_map<R: Send + Sync>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let slots: Vec<std::sync::OnceLock<R>> = (0..n).map(|_| std::sync::OnceLock::new()).collect();
    par_for(n, |i| {
        let _ = slots[i].set(f(i));
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().expect("par_for ran every index"))
        .collect()
}

/// A buffer that [`par_for`]'s tasks write in disjoint parts (rows of an output): its
/// pointer, shareable across the threads. Each task checks the range it writes.
pub struct Disjoint<T>(*mut T);

impl<T> Disjoint<T> {
    pub fn new(buf: &mut [T]) -> Disjoint<T> {
        Disjoint(buf.as_mut_ptr())
    }

    /// `len` elements from `at`, for one task alone.
    ///
    /// # Safety
    /// `at + len` must not pass the buffer's end, the buffer must outlive the slice, and
    /// no other task may touch those elements meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, at: usize, len: usize) -> &mut [T] {
        // SAFETY: the caller's contract above.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

// SAFETY: tasks write disjoint parts (the contract of `part`), of a buffer that outlives
// them.
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index runs exactly once, from outside the pool and from a worker, for
    /// counts around the thread count.
    #[test]
    fn par_for_runs_every_index_once() {
        for n in [0usize, 1, 2, 3, 7, 64, 1000] {
            let check = || {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                par_for(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(h.load(Ordering::Relaxed), 1, "n {n}: index {i}");
                }
            };
            check();
            rayon::scope(|_| check());
        }
    }

    /// Runs cover every index once, as consecutive ranges of `per` (a zero `per` taken as
    /// one) with only the last shorter, for counts and run lengths that divide and do not.
    #[test]
    fn par_runs_cover_every_index_once_in_runs_of_per() {
        for n in [0usize, 1, 5, 64, 1000] {
            for per in [0usize, 1, 3, 7, 64, 2000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let bad = AtomicUsize::new(0);
                let want = per.max(1);
                rayon::scope(|_| {
                    par_runs(n, per, |r| {
                        // a run starts on a multiple of `per` and is `per` long unless it ends at n
                        if r.start % want != 0 || (r.len() != want && r.end != n) || r.is_empty() {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    })
                });
                assert_eq!(
                    bad.load(Ordering::Relaxed),
                    0,
                    "n {n} per {per}: a malformed run"
                );
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(h.load(Ordering::Relaxed), 1, "n {n} per {per}: index {i}");
                }
            }
        }
    }

    #[test]
    fn par_map_keeps_index_order() {
        for n in [0usize, 1, 5, 333] {
            let got = rayon::scope(|_| par_map(n, |i| (i * i) as u64 + 7));
            let want: Vec<u64> = (0..n).map(|i| (i * i) as u64 + 7).collect();
            assert_eq!(got, want, "n {n}");
        }
    }

    /// A panic in one index reaches the caller (after the other indices' threads are
    /// done) instead of leaving it waiting for an index that never finishes.
    #[test]
    fn a_panic_in_an_index_reaches_the_caller() {
        for bad in [0usize, 5, 39] {
            let ran = AtomicUsize::new(0);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rayon::scope(|_| {
                    par_for(40, |i| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        assert_ne!(i, bad, "index {i} fails");
                    })
                })
            }));
            assert!(r.is_err(), "the panic at {bad} was lost");
            assert_eq!(ran.load(Ordering::Relaxed), 40, "every index still ran");
        }
    }

    /// A poller keeps polling while nothing comes for IDLE, then returns (on a pool of
    /// its own, so no other test's work reaches it).
    #[test]
    fn a_poller_stops_once_idle() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let took = pool.install(|| {
            let t0 = Instant::now();
            poll();
            t0.elapsed()
        });
        assert!(took >= IDLE, "stopped after {took:?}, before {IDLE:?} idle");
        assert!(took < IDLE * 500, "still polling after {took:?}");
        // outside any pool there is nothing to poll
        let t0 = Instant::now();
        poll();
        assert!(t0.elapsed() < IDLE, "polled outside a pool");
    }
}
