//! The GPU suites a second time, with every kernel compiled under naga's full runtime
//! checks (bounds clamping and loop bounding: the mode `PONDER_SHADER_CHECKS=1` gives).
//! ponder compiles its shaders without them by default (see
//! `ponder::backend::gpu::runtime_checks`); running the same tests both ways means a
//! kernel that reads or writes out of bounds disagrees with itself and fails here or there.
//! `common::gpu_ok` turns the checks on when it sees this crate's name.
// the suites load tests/common as a module of their own, as they do standing alone
#![allow(clippy::duplicate_mod)]

#[path = "errors.rs"]
mod errors;
#[path = "fused_vs_composed.rs"]
mod fused_vs_composed;
#[path = "generate.rs"]
mod generate;
#[path = "gpu_vs_cpu.rs"]
mod gpu_vs_cpu;
#[path = "known_answer.rs"]
mod known_answer;
#[path = "parity.rs"]
mod parity;
#[path = "train_parity.rs"]
mod train_parity;
