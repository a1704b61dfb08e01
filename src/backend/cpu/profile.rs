//! The CPU side of `ponder bench --profile`: wall time per op family, forward and
//! backward apart, with GFLOP/s where an op declares its FLOPs and GB/s of the inputs it
//! read. An op is timed from the outermost point where it touches CPU data (its kernel,
//! threads included); a backward is timed as a whole closure, so the ops it calls inside
//! count as that backward. Time outside every op (the tape walk, host glue) is reported as
//! what is left of the wall time. Free when no profile is open: one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static ROWS: Mutex<Option<HashMap<String, Row>>> = Mutex::new(None);

thread_local! {
    /// The open span on this thread: its depth, and the FLOPs and bytes declared in it.
    static OPEN: std::cell::RefCell<Open> = const { std::cell::RefCell::new(Open { depth: 0, flops: 0.0, bytes: 0.0 }) };
}

struct Open {
    depth: usize,
    flops: f64,
    bytes: f64,
}

#[derive(Clone, Debug, Default)]
struct Row {
    count: usize,
    ns: f64,
    flops: f64,
    bytes: f64,
}

/// Times an op until dropped (only the outermost on a thread counts).
pub struct Span {
    /// Whether this span counted itself into the thread's depth.
    live: bool,
    /// Set on the outermost span only.
    start: Option<(Instant, &'static str, bool)>,
}

/// Open a span for `op` (`backward` for a gradient closure). A span inside another is
/// free and adds nothing: its time and costs belong to the outer one.
pub fn span(op: &'static str, backward: bool) -> Span {
    if !ON.load(Ordering::Relaxed) {
        return Span {
            live: false,
            start: None,
        };
    }
    let outer = OPEN.with(|o| {
        let mut o = o.borrow_mut();
        o.depth += 1;
        if o.depth == 1 {
            o.flops = 0.0;
            o.bytes = 0.0;
        }
        o.depth == 1
    });
    Span {
        live: true,
        start: outer.then(|| (Instant::now(), op, backward)),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        let done = OPEN.with(|o| {
            let mut o = o.borrow_mut();
            o.depth -= 1;
            (o.depth == 0).then_some((o.flops, o.bytes))
        });
        if let (Some((flops, bytes)), Some((t0, op, backward))) = (done, self.start) {
            let ns = t0.elapsed().as_nanos() as f64;
            let key = if backward {
                format!("{op} bwd")
            } else {
                op.to_string()
            };
            let mut rows = ROWS.lock().unwrap();
            let row = rows
                .get_or_insert_with(HashMap::new)
                .entry(key)
                .or_default();
            row.count += 1;
            row.ns += ns;
            row.flops += flops;
            row.bytes += bytes;
        }
    }
}

/// Declare useful FLOPs of the work in the open span (matmul, attention).
pub fn flops(f: f64) {
    if ON.load(Ordering::Relaxed) {
        OPEN.with(|o| o.borrow_mut().flops += f);
    }
}

/// Count bytes of input read in the open span.
pub fn bytes(b: f64) {
    if ON.load(Ordering::Relaxed) {
        OPEN.with(|o| o.borrow_mut().bytes += b);
    }
}

/// Start collecting (clears what an earlier profile kept).
pub fn start() {
    *ROWS.lock().unwrap() = Some(HashMap::new());
    ON.store(true, Ordering::Relaxed);
}

/// Stop collecting and format the table over `wall_s` seconds of profiled work.
pub fn finish(wall_s: f64) -> String {
    ON.store(false, Ordering::Relaxed);
    let rows = ROWS.lock().unwrap().take().unwrap_or_default();
    let mut rows: Vec<(String, Row)> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1.ns.total_cmp(&a.1.ns).then(a.0.cmp(&b.0)));
    let wall_ns = wall_s * 1e9;
    let mut s = format!(
        "{:<28} {:>7} {:>11} {:>10} {:>7} {:>10} {:>12}\n",
        "op (cpu)", "count", "total ms", "mean us", "% wall", "GFLOP/s", "GB/s read"
    );
    let mut timed = 0.0;
    for (op, r) in &rows {
        timed += r.ns;
        let rate = |x: f64| {
            if x > 0.0 && r.ns > 0.0 {
                format!("{:.1}", x / r.ns)
            } else {
                "-".into()
            }
        };
        s.push_str(&format!(
            "{:<28} {:>7} {:>11.3} {:>10.1} {:>7.1} {:>10} {:>12}\n",
            op,
            r.count,
            r.ns / 1e6,
            r.ns / 1e3 / r.count.max(1) as f64,
            100.0 * r.ns / wall_ns.max(1.0),
            rate(r.flops),
            rate(r.bytes),
        ));
    }
    let rest = (wall_ns - timed).max(0.0);
    s.push_str(&format!(
        "{:<28} {:>7} {:>11.3} {:>10} {:>7.1}\n",
        "(outside ops: tape, glue)",
        "-",
        rest / 1e6,
        "-",
        100.0 * rest / wall_ns.max(1.0)
    ));
    s.push_str(&format!(
        "wall {:.3} ms on {} threads",
        wall_ns / 1e6,
        rayon::current_num_threads()
    ));
    s
}
