//! `tests/gpu_split.rs` under naga's full runtime checks (see `tests/gpu_checked.rs`): the
//! binding windows and block offsets of the split kernels are where an index past a
//! window would hide. A binary of its own, as that suite lowers the binding limit for
//! every test in its process.

#[path = "gpu_split.rs"]
mod gpu_split;
