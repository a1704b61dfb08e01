//! Small helpers: seeded random numbers for tests, benches and initialisation.

use rand::{Rng, SeedableRng};

/// A seeded generator (ChaCha12: the same stream on every platform).
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `n` normal samples with standard deviation `std` (Box-Muller).
pub fn randn_vec(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = r.random::<f64>().max(1e-300);
        let u2: f64 = r.random::<f64>();
        let rad = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((rad * th.cos()) as f32 * std);
        out.push((rad * th.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

/// `n` uniform samples in `[lo, hi)`.
pub fn uniform_vec(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| lo + (hi - lo) * r.random::<f32>()).collect()
}

/// A seed that differs on every call (tests draw fresh inputs each run and print it).
pub fn fresh_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (t as u64) ^ (c.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ (std::process::id() as u64) << 32
}

/// A progress bar on stderr (hidden when `quiet`, or when stderr is not a terminal that
/// indicatif can draw on).
pub fn progress_bar(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    // of several MPI ranks only rank 0 draws, or the bars would overwrite each other
    if quiet || !crate::dist::is_root() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// Memory the operating system can give this process now: Linux's MemAvailable, or
/// `PONDER_MEMORY_LIMIT` (bytes) where set, for a machine shared with other jobs. `None`
/// where neither can be read (another OS), and then nothing is refused.
pub fn available() -> Option<u64> {
    if let Some(v) = std::env::var("PONDER_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(v);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes in GiB, or MiB under one GiB, for messages.
pub fn gib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}
