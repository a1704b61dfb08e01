//! The MPI calls themselves (rsmpi), behind the `mpi` feature. Only [`super`] calls them,
//! and only with more than one rank.

use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

use crate::error::{Error, Result};

pub use mpi::environment::Universe;

/// Elements per collective call: MPI counts are 32-bit, and a bounded chunk bounds the
/// staging copy an out-of-place all-reduce needs.
const CHUNK: usize = 1 << 24;

fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

/// MPI_Init_thread (calls come from one thread at a time, not always the main one);
/// (universe, rank, size).
pub fn start() -> Result<(Universe, usize, usize)> {
    let (universe, _provided) = mpi::initialize_with_threading(Threading::Serialized)
        .ok_or_else(|| Error::invalid("mpi", "MPI was already initialised"))?;
    let w = universe.world();
    Ok((universe, w.rank() as usize, w.size() as usize))
}

pub fn abort(code: i32) -> ! {
    world().abort(code)
}

pub fn barrier() {
    world().barrier()
}

fn all_reduce<T: Equivalence + Copy>(buf: &mut [T]) {
    let w = world();
    for chunk in buf.chunks_mut(CHUNK) {
        let send = chunk.to_vec();
        w.all_reduce_into(&send[..], chunk, SystemOperation::sum());
    }
}

pub fn all_reduce_f32(buf: &mut [f32]) {
    all_reduce(buf)
}

pub fn all_reduce_f64(buf: &mut [f64]) {
    all_reduce(buf)
}

/// Lengths first, then the bytes of every rank in one variable-count gather.
pub fn all_gather_bytes(mine: &[u8]) -> Vec<Vec<u8>> {
    let w = world();
    let n = w.size() as usize;
    let mut lens = vec![0u64; n];
    w.all_gather_into(&(mine.len() as u64), &mut lens[..]);
    let total: u64 = lens.iter().sum();
    assert!(
        total < i32::MAX as u64,
        "gathered records of {total} bytes exceed one MPI message"
    );
    let counts: Vec<Count> = lens.iter().map(|&l| l as Count).collect();
    let displs: Vec<Count> = counts
        .iter()
        .scan(0, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect();
    let mut all = vec![0u8; total as usize];
    {
        let mut part = PartitionMut::new(&mut all[..], counts, &displs[..]);
        w.all_gather_varcount_into(mine, &mut part);
    }
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    for l in lens {
        out.push(all[at..at + l as usize].to_vec());
        at += l as usize;
    }
    out
}

pub fn broadcast_bytes(mut bytes: Vec<u8>) -> Vec<u8> {
    let w = world();
    let root = w.process_at_rank(0);
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    for chunk in bytes.chunks_mut(CHUNK) {
        root.broadcast_into(chunk);
    }
    bytes
}
