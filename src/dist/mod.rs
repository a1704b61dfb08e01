//! More than one process: data-parallel training and sharded sampling over MPI.
//!
//! `mpirun -np N ponder <command>` starts N ranks. Each rank uses one device (the CPU, or
//! GPU adapter number local rank mod adapters) and runs the same command over its share
//! of the work: an optimizer step's micro-batches, the reference pass's pairs, a recipe's
//! questions. What the ranks must agree on travels through a few collectives, all staged
//! through host memory (so every wgpu backend works): one all-reduce of the gradients per
//! step, gathers of the records a rank made, broadcasts of what rank 0 decided.
//!
//! MPI comes from the `mpi` cargo feature (rsmpi over a system MPI), off by default. A
//! build without it that finds itself started as one of several ranks stops at once, and
//! says how to rebuild. With one rank every collective is a no-op, so library code calls
//! them unconditionally.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

#[cfg(feature = "mpi")]
mod comm;

static RANK: AtomicUsize = AtomicUsize::new(0);
static SIZE: AtomicUsize = AtomicUsize::new(1);
static LOCAL_RANK: AtomicUsize = AtomicUsize::new(0);

/// This process's rank (0 without MPI).
pub fn rank() -> usize {
    RANK.load(Ordering::Relaxed)
}

/// How many ranks run the job (1 without MPI).
pub fn size() -> usize {
    SIZE.load(Ordering::Relaxed)
}

/// This rank's index among the ranks on its machine (picks its GPU adapter).
pub fn local_rank() -> usize {
    LOCAL_RANK.load(Ordering::Relaxed)
}

/// Rank 0 alone writes metrics, checkpoints, plots, records and the final model.
pub fn is_root() -> bool {
    rank() == 0
}

/// The contiguous, balanced share of `0..n` that `rank` of `size` takes: the first
/// `n % size` ranks take one more. Concatenated in rank order the shares are `0..n`.
pub fn share_of(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (q, r) = (n / size.max(1), n % size.max(1));
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

/// This rank's share of `0..n`.
pub fn share(n: usize) -> Range<usize> {
    share_of(n, rank(), size())
}

/// The number of ranks the launcher says it started, from the environment that Open MPI,
/// MPICH/Hydra, PMIx and Slurm's `srun --mpi` give each process (1 when none is set).
pub fn launched_ranks() -> usize {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse().ok())
    .unwrap_or(1)
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
fn env_local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "PMI_LOCAL_RANK",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// Keeps MPI initialised; finalises it when dropped at the end of `main`.
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<comm::Universe>,
}

/// Start MPI when the process was launched as one of several ranks. Without the `mpi`
/// feature that is an error that names the fix; with one rank nothing starts.
pub fn init() -> Result<Session> {
    let launched = launched_ranks();
    #[cfg(not(feature = "mpi"))]
    {
        if launched > 1 {
            return Err(Error::invalid(
                "mpi",
                format!(
                    "this ponder was built without MPI, but the launcher started it as one of \
                     {launched} ranks, which would each run the whole job alone; rebuild with \
                     `cargo build --release --features mpi` (needs an MPI library such as \
                     Open MPI, and libclang), or run it without mpirun"
                ),
            ));
        }
        Ok(Session {})
    }
    #[cfg(feature = "mpi")]
    {
        if launched <= 1 && std::env::var_os("OMPI_COMM_WORLD_RANK").is_none() {
            return Ok(Session { _universe: None });
        }
        let (universe, rank, size) = comm::start()?;
        RANK.store(rank, Ordering::Relaxed);
        SIZE.store(size, Ordering::Relaxed);
        LOCAL_RANK.store(env_local_rank().unwrap_or(rank), Ordering::Relaxed);
        if size > 1 {
            install_abort_on_panic();
        }
        Ok(Session {
            _universe: Some(universe),
        })
    }
}

/// A rank that panics takes the job down with it instead of leaving the others waiting in
/// a collective forever.
#[cfg(feature = "mpi")]
fn install_abort_on_panic() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        eprintln!("rank {}: panicked; aborting the job", rank());
        abort(101);
    }));
}

/// End every rank of the job now (MPI_Abort), after a rank hit an error the others cannot
/// know about. Without MPI, exit.
pub fn abort(code: i32) -> ! {
    #[cfg(feature = "mpi")]
    if size() > 1 {
        comm::abort(code);
    }
    std::process::exit(code)
}

/// Sum `buf` over the ranks, in place, on every rank.
pub fn all_reduce_f32(buf: &mut [f32]) {
    #[cfg(feature = "mpi")]
    if size() > 1 {
        comm::all_reduce_f32(buf);
    }
    #[cfg(not(feature = "mpi"))]
    let _ = buf; // one rank: the sum is the buffer
}

/// Sum `buf` over the ranks, in place, on every rank.
pub fn all_reduce_f64(buf: &mut [f64]) {
    #[cfg(feature = "mpi")]
    if size() > 1 {
        comm::all_reduce_f64(buf);
    }
    #[cfg(not(feature = "mpi"))]
    let _ = buf; // one rank: the sum is the buffer
}

/// Every rank's `mine`, in rank order, on every rank.
pub fn all_gather_bytes(mine: &[u8]) -> Vec<Vec<u8>> {
    if size() <= 1 {
        return vec![mine.to_vec()];
    }
    #[cfg(feature = "mpi")]
    {
        comm::all_gather_bytes(mine)
    }
    #[cfg(not(feature = "mpi"))]
    unreachable!("several ranks need the mpi feature")
}

/// Rank 0's `bytes` on every rank (the others' argument is ignored).
pub fn broadcast_bytes(bytes: Vec<u8>) -> Vec<u8> {
    if size() <= 1 {
        return bytes;
    }
    #[cfg(feature = "mpi")]
    {
        comm::broadcast_bytes(bytes)
    }
    #[cfg(not(feature = "mpi"))]
    unreachable!("several ranks need the mpi feature")
}

/// Rank 0's `path` on every rank (a default output directory that each rank would
/// otherwise pick for itself, and differently once rank 0 has made it).
pub fn root_path(path: std::path::PathBuf) -> std::path::PathBuf {
    if size() <= 1 {
        return path;
    }
    let bytes = broadcast_bytes(path.to_string_lossy().into_owned().into_bytes());
    std::path::PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

/// Every rank's `mine` (a JSON value), in rank order, on every rank.
pub fn all_gather_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    mine: &T,
) -> Result<Vec<T>> {
    let bytes = serde_json::to_vec(mine).map_err(|e| Error::invalid("mpi", e.to_string()))?;
    all_gather_bytes(&bytes)
        .iter()
        .map(|b| serde_json::from_slice(b).map_err(|e| Error::invalid("mpi", e.to_string())))
        .collect()
}

/// Rank 0's outcome of something only rank 0 did (writing a file, checking one), on
/// every rank: an error on rank 0 becomes an error on every rank, so none waits in a later
/// collective for a rank that stopped.
pub fn root_outcome<T>(on_root: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
    if size() <= 1 {
        return on_root().map(Some);
    }
    let (r, msg) = if is_root() {
        match on_root() {
            Ok(v) => (Some(v), Vec::new()),
            Err(e) => (None, e.to_string().into_bytes()),
        }
    } else {
        (None, Vec::new())
    };
    let msg = broadcast_bytes(msg);
    if !msg.is_empty() {
        return Err(Error::invalid(
            "mpi",
            format!("rank 0: {}", String::from_utf8_lossy(&msg)),
        ));
    }
    Ok(r)
}

/// Rank 0's yes or no (see [`root_outcome`]), on every rank.
pub fn root_flag(on_root: impl FnOnce() -> Result<bool>) -> Result<bool> {
    let r = root_outcome(on_root)?;
    Ok(broadcast_bytes(vec![(r == Some(true)) as u8]) == [1])
}

/// Wait for every rank.
pub fn barrier() {
    if size() > 1 {
        #[cfg(feature = "mpi")]
        comm::barrier();
    }
}

#[cfg(test)]
mod tests {
    use super::share_of;

    #[test]
    fn shares_are_contiguous_balanced_and_cover_everything() {
        for n in [0, 1, 5, 7, 16] {
            for size in 1..5 {
                let all: Vec<usize> = (0..size).flat_map(|r| share_of(n, r, size)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} size {size}");
                let lens: Vec<usize> = (0..size).map(|r| share_of(n, r, size).len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
