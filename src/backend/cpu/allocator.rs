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
