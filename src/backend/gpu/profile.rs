//! A per-kernel GPU profiler from timestamp queries, for `ponder bench ... --profile`.
//!
//! While a profile is open, every dispatch gets its own pair of timestamps (the start and
//! end of its compute pass) in a query set made for the encoder it is recorded into.
//! When the encoder is submitted the timestamps are resolved and copied to a mappable
//! buffer; closing the profile waits, reads them, and groups the durations by
//! `shader:entry`. Where the adapter lacks `TIMESTAMP_QUERY`, only host-side figures are
//! kept (dispatch counts and the time spent recording each kernel), and the report says
//! so.
//!
//! Counts that cost nothing are kept whether or not a profile is open: dispatches,
//! submits and readbacks since the process started ([`counters`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Dispatches, submits, readbacks, compute passes begun and bind groups created since
/// start-up.
pub(crate) static DISPATCHES: AtomicU64 = AtomicU64::new(0);
pub(crate) static SUBMITS: AtomicU64 = AtomicU64::new(0);
pub(crate) static READBACKS: AtomicU64 = AtomicU64::new(0);
pub(crate) static PASSES: AtomicU64 = AtomicU64::new(0);
pub(crate) static BIND_GROUPS: AtomicU64 = AtomicU64::new(0);
pub(crate) static IMMEDIATES: AtomicU64 = AtomicU64::new(0);

/// The free counts, read at one moment: subtract two readings to count a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub dispatches: u64,
    pub submits: u64,
    pub readbacks: u64,
    /// Compute passes begun: consecutive dispatches share one unless profiled.
    pub passes: u64,
    /// Bind groups created: a dispatch over buffers its kernel met before reuses one.
    pub bind_groups: u64,
    /// Dispatches whose shape parameters went as immediates rather than the ring.
    pub immediates: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            dispatches: self.dispatches - o.dispatches,
            submits: self.submits - o.submits,
            readbacks: self.readbacks - o.readbacks,
            passes: self.passes - o.passes,
            bind_groups: self.bind_groups - o.bind_groups,
            immediates: self.immediates - o.immediates,
        }
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dispatches {} ({} with immediates), compute passes {}, bind groups created {}, submits {}, readbacks {}",
            self.dispatches,
            self.immediates,
            self.passes,
            self.bind_groups,
            self.submits,
            self.readbacks
        )
    }
}

pub fn counters() -> Counters {
    Counters {
        dispatches: DISPATCHES.load(Ordering::Relaxed),
        submits: SUBMITS.load(Ordering::Relaxed),
        readbacks: READBACKS.load(Ordering::Relaxed),
        passes: PASSES.load(Ordering::Relaxed),
        bind_groups: BIND_GROUPS.load(Ordering::Relaxed),
        immediates: IMMEDIATES.load(Ordering::Relaxed),
    }
}

thread_local! {
    /// FLOPs and bytes of the next dispatch on this thread, when the op knows them.
    static NEXT_COST: std::cell::Cell<Option<(f64, f64)>> = const { std::cell::Cell::new(None) };
}

/// Declare the useful FLOPs and the fewest bytes the next dispatch on this thread must
/// move; the profile reports GFLOP/s and GB/s from them. Free when no profile is open.
pub fn cost(flops: f64, bytes: f64) {
    NEXT_COST.with(|c| c.set(Some((flops, bytes))));
}

pub(crate) fn take_cost() -> Option<(f64, f64)> {
    NEXT_COST.with(|c| c.take())
}

/// One recorded dispatch.
pub(crate) struct Record {
    pub kernel: String,
    pub host_ns: u64,
    pub cost: Option<(f64, f64)>,
}

/// The open profile's state, kept in the GPU context under its own lock.
#[derive(Default)]
pub(crate) struct State {
    pub on: bool,
    pub timestamps: bool,
    /// The query set of the encoder now recording, and the records made into it.
    pub query_set: Option<wgpu::QuerySet>,
    pub current: Vec<Record>,
    /// Submitted encoders: their records and the buffer their timestamps land in.
    pub done: Vec<(Vec<Record>, Option<wgpu::Buffer>)>,
    pub started: Option<Instant>,
    pub counters_at_start: Counters,
}

/// One kernel's row.
#[derive(Clone, Debug, Default)]
pub struct KernelRow {
    pub kernel: String,
    pub count: usize,
    /// GPU time (0 without timestamps).
    pub gpu_ns: f64,
    pub host_ns: f64,
    pub flops: Option<f64>,
    pub bytes: Option<f64>,
}

/// A closed profile.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub rows: Vec<KernelRow>,
    pub timestamps: bool,
    /// The free counts of the profiled work. A profiled dispatch has a compute pass of
    /// its own, so `passes` equals `dispatches` here: read [`counters`] around unprofiled
    /// work to see the passes shared.
    pub counts: Counters,
    /// Wall time from opening to closing the profile.
    pub wall_s: f64,
    /// First dispatch start to last dispatch end, on the GPU's clock.
    pub gpu_span_ns: f64,
}

impl Profile {
    pub fn gpu_busy_ns(&self) -> f64 {
        self.rows.iter().map(|r| r.gpu_ns).sum()
    }

    pub fn host_record_ns(&self) -> f64 {
        self.rows.iter().map(|r| r.host_ns).sum()
    }

    /// The table `ponder bench --profile` prints.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let busy = self.gpu_busy_ns();
        if !self.timestamps {
            s.push_str(
                "this adapter has no timestamp queries (TIMESTAMP_QUERY): host timings only\n",
            );
        }
        s.push_str(&format!(
            "{:<44} {:>7} {:>11} {:>10} {:>7} {:>10} {:>9}\n",
            "shader:entry", "count", "total ms", "mean us", "% gpu", "GFLOP/s", "GB/s"
        ));
        for r in &self.rows {
            let t = if self.timestamps { r.gpu_ns } else { r.host_ns };
            let rate = |x: Option<f64>| match x {
                Some(v) if self.timestamps && r.gpu_ns > 0.0 => format!("{:.1}", v / r.gpu_ns),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "{:<44} {:>7} {:>11.3} {:>10.1} {:>7} {:>10} {:>9}\n",
                r.kernel,
                r.count,
                t / 1e6,
                t / 1e3 / r.count.max(1) as f64,
                if self.timestamps && busy > 0.0 {
                    format!("{:.1}", 100.0 * r.gpu_ns / busy)
                } else {
                    "-".into()
                },
                rate(r.flops),
                rate(r.bytes),
            ));
        }
        let wall_ns = self.wall_s * 1e9;
        s.push_str(&format!(
            "{}; wall {:.3} ms, host recording {:.3} ms",
            self.counts,
            wall_ns / 1e6,
            self.host_record_ns() / 1e6
        ));
        if self.timestamps {
            // idle: the gaps between kernels, from the first start to the last end
            let idle = (self.gpu_span_ns - busy).max(0.0);
            s.push_str(&format!(
                ", GPU busy {:.3} ms, GPU idle between kernels {:.3} ms ({:.0}% of the GPU span)",
                busy / 1e6,
                idle / 1e6,
                100.0 * idle / self.gpu_span_ns.max(1.0)
            ));
        }
        s
    }
}

/// Group records (with their durations in ns, if any) into rows, slowest first.
pub(crate) fn rows(records: Vec<(Record, Option<f64>)>) -> Vec<KernelRow> {
    let mut by: HashMap<String, KernelRow> = HashMap::new();
    for (r, ns) in records {
        let row = by.entry(r.kernel.clone()).or_insert_with(|| KernelRow {
            kernel: r.kernel.clone(),
            ..Default::default()
        });
        row.count += 1;
        row.gpu_ns += ns.unwrap_or(0.0);
        row.host_ns += r.host_ns as f64;
        // a kernel that declares only its bytes (memory-bound ones) has no GFLOP/s
        if let Some((f, b)) = r.cost {
            if f > 0.0 {
                *row.flops.get_or_insert(0.0) += f;
            }
            if b > 0.0 {
                *row.bytes.get_or_insert(0.0) += b;
            }
        }
    }
    let mut v: Vec<KernelRow> = by.into_values().collect();
    v.sort_by(|a, b| {
        (b.gpu_ns + b.host_ns)
            .total_cmp(&(a.gpu_ns + a.host_ns))
            .then(a.kernel.cmp(&b.kernel))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_group_by_kernel_and_sum_costs() {
        let rec = |k: &str, ns: f64, cost: Option<(f64, f64)>| {
            (
                Record {
                    kernel: k.into(),
                    host_ns: 10,
                    cost,
                },
                Some(ns),
            )
        };
        let r = rows(vec![
            rec("matmul:main", 100.0, Some((2e3, 8.0))),
            rec("add:main", 5.0, None),
            rec("matmul:main", 300.0, Some((6e3, 8.0))),
            rec("copy:copy", 2.0, Some((0.0, 64.0))),
        ]);
        assert_eq!(r[0].kernel, "matmul:main");
        assert_eq!(r[0].count, 2);
        assert_eq!(r[0].gpu_ns, 400.0);
        assert_eq!(r[0].flops, Some(8e3));
        assert_eq!(r[1].flops, None);
        // a memory-bound kernel declares bytes only: GB/s but no GFLOP/s
        assert_eq!((r[2].kernel.as_str(), r[2].flops), ("copy:copy", None));
        assert_eq!(r[2].bytes, Some(64.0));
        let p = Profile {
            rows: r,
            timestamps: true,
            wall_s: 1e-6,
            ..Default::default()
        };
        let t = p.table();
        // 8e3 FLOPs in 400 ns = 20 GFLOP/s; matmul is 400 / 407 of the GPU time; the
        // copy's 64 bytes in 2 ns are 32 GB/s
        assert!(t.contains("20.0"), "{t}");
        assert!(t.contains("98.3"), "{t}");
        assert!(t.contains("32.0"), "{t}");
    }
}
