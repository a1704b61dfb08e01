//! `tests/optimizer_arena.rs` under naga's full runtime checks (see `tests/gpu_checked.rs`):
//! the arena's parameters are views at offsets inside shared chunks. A binary of its own,
//! as that suite counts dispatches with the process-wide profiler.

#[path = "optimizer_arena.rs"]
mod optimizer_arena;
