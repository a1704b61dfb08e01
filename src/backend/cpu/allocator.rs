//! How the process's allocator treats the CPU backend's tensor buffers.
//!
//! A training step or a decode step allocates and frees buffers of the same sizes over
//! and over (activations, gradients, GEMM outputs). glibc's malloc serves blocks over its
//! mmap threshold (128 KiB at start) with fresh mappings and trims freed heap memory back
//! to the kernel, so each step pays page faults, page zeroing and TLB shootdowns across
//! the worker threads to get the same memory again. On this project's 2-core reference
//! machine that cost a 64x576x576 decode GEMM about a quarter of its time (0.36 -> 0.27
//! ms, best of 200).
//!
//! [`keep_freed_memory`] raises the mmap threshold to glibc's maximum (32 MiB: larger
//! blocks, such as logits chunks, still map and unmap) and stops trimming, so freed
//! buffers are reused in place. Peak RSS is unchanged; RSS simply does not fall between
//! steps. On other C libraries it does nothing.
//!
//! It also keeps every thread on the main arena. The command runs on a worker thread
//! (see `threads::on_worker`), and glibc gives each new allocating thread an arena of its
//! own: heaps of at most 64 MiB, mapped and unmapped as they fill and empty, so a decode
//! step's 19 MB logits kept faulting in fresh pages. One eval took 672K page faults
//! that way against 417K on the main arena. Outside the command's thread, the workers
//! allocate a buffer or two per task, so they rarely meet on the arena's lock.

/// Keep freed buffers for reuse instead of returning them to the kernel, with all threads
/// on one arena (see the module comment). The CLI calls it first thing; an embedding
/// program may call it too. Safe to call more than once.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // mallopt parameters from glibc's malloc.h
        const M_TRIM_THRESHOLD: libc::c_int = -1;
        const M_MMAP_THRESHOLD: libc::c_int = -3;
        const M_ARENA_MAX: libc::c_int = -8;
        // SAFETY: mallopt only sets allocator parameters; it is safe at any time.
        unsafe {
            libc::mallopt(M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(M_TRIM_THRESHOLD, libc::c_int::MAX);
            libc::mallopt(M_ARENA_MAX, 1);
        }
    }
}

/// The system allocator, with every block of [`Aligned64::FROM`] bytes or more aligned
/// to a cache line (64 bytes). glibc aligns blocks to 16 bytes, so a tensor's buffer
/// starts anywhere in a line: every 512-bit load of a packed panel then spans two lines,
/// and so does every other 256-bit load along a row (a cached key, a row of
/// activations). Installed as the binary's global allocator, on a Zen 4 it cut the op
/// times of `bench generate --profile` over 24 real questions (96 rows): matrix products
/// 2-3%, decoding attention about 5%, rope and residual adds 10-20%; `bench matmul` at
/// 96 rows, 576x1536 from memory, 175-178 against 157-158 GFLOP/s. `eval` over 48
/// questions ran 3% faster over the means of nine and ten interleaved runs, inside that
/// machine's noise. Smaller blocks keep the plain path.
pub struct Aligned64;

impl Aligned64 {
    /// Blocks from this size on are line-aligned.
    pub const FROM: usize = 4096;

    /// The layout the system allocator sees for a block of layout `l`.
    fn layout(l: std::alloc::Layout) -> std::alloc::Layout {
        if l.size() >= Self::FROM && l.align() < 64 {
            // a size that was valid at a smaller alignment rounds up to 64 without
            // passing isize::MAX unless it was within 64 of it: then keep `l`
            std::alloc::Layout::from_size_align(l.size(), 64).unwrap_or(l)
        } else {
            l
        }
    }
}

// SAFETY: every call forwards to the system allocator with a layout derived only from
// the caller's layout (the same one for a block's allocation, reallocation and release).
unsafe impl std::alloc::GlobalAlloc for Aligned64 {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: a valid layout of non-zero size (the caller's contract).
        unsafe { std::alloc::System.alloc(Self::layout(l)) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(Self::layout(l)) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: p came from alloc with Self::layout(l), the same layout.
        unsafe { std::alloc::System.dealloc(p, Self::layout(l)) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        let (from, to) = (
            Self::layout(l),
            Self::layout(std::alloc::Layout::from_size_align(new, l.align()).unwrap_or(l)),
        );
        if from.align() == to.align() {
            // SAFETY: p was allocated with `from`; the new size is valid for its alignment.
            return unsafe { std::alloc::System.realloc(p, from, new) };
        }
        // the block crosses FROM: a new block at the new alignment, and a copy
        // SAFETY: `to` has a non-zero size (realloc's contract: new > 0).
        let q = unsafe { std::alloc::System.alloc(to) };
        if !q.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes and are distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                std::alloc::System.dealloc(p, from);
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::Aligned64;
    use std::alloc::{GlobalAlloc, Layout};

    /// Large blocks come back line-aligned, small ones as the system gives them, and a
    /// block keeps its bytes when reallocation moves it across the threshold either way.
    #[test]
    fn large_blocks_are_line_aligned_and_keep_their_bytes() {
        let a = Aligned64;
        let at = |n: usize| Layout::from_size_align(n, 4).unwrap();
        // SAFETY: every block is allocated, used within its size and released with the
        // layout it was allocated (or last reallocated) with.
        unsafe {
            for n in [Aligned64::FROM, Aligned64::FROM + 4, 1 << 20] {
                let p = a.alloc(at(n));
                assert!(!p.is_null() && (p as usize).is_multiple_of(64), "{n} bytes");
                a.dealloc(p, at(n));
                let z = a.alloc_zeroed(at(n));
                assert!((z as usize).is_multiple_of(64));
                assert!(std::slice::from_raw_parts(z, n).iter().all(|&b| b == 0));
                a.dealloc(z, at(n));
            }
            let small = a.alloc(at(64));
            assert!((small as usize).is_multiple_of(4));
            // grow from below the threshold to above it, then shrink back
            for (i, b) in std::slice::from_raw_parts_mut(small, 64)
                .iter_mut()
                .enumerate()
            {
                *b = i as u8 + 1;
            }
            let big = a.realloc(small, at(64), 3 * Aligned64::FROM);
            assert!((big as usize).is_multiple_of(64));
            let want: Vec<u8> = (1..=64).collect();
            assert_eq!(std::slice::from_raw_parts(big, 64), &want[..]);
            let back = a.realloc(big, at(3 * Aligned64::FROM), 32);
            assert_eq!(std::slice::from_raw_parts(back, 32), &want[..32]);
            a.dealloc(back, at(32));
        }
    }
}
