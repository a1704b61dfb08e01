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

/// Keep freed buffers for reuse instead of returning them to the kernel (see the module
/// comment). The CLI calls it first thing; an embedding program may call it too. Safe to
/// call more than once.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // mallopt parameters from glibc's malloc.h
        const M_TRIM_THRESHOLD: libc::c_int = -1;
        const M_MMAP_THRESHOLD: libc::c_int = -3;
        // SAFETY: mallopt only sets allocator parameters; it is safe at any time.
        unsafe {
            libc::mallopt(M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}
