//! ponder: a from-scratch ML engine for preference-optimised reasoning models.
//!
//! Tensors live on one [`Device`]: the CPU reference backend (plain loops, f32 or f64) or
//! the GPU backend (wgpu with the hand-written WGSL kernels in `shaders/`). Every op has a
//! hand-written backward next to its forward; [`autograd`] walks them in reverse.

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod dist;
pub mod dtype;
pub mod error;
pub mod files;
pub mod model;
pub mod ops;
pub mod plot;
pub mod recipes;
pub mod selfcheck;
pub mod shape;
pub mod tensor;
pub mod train;
pub mod util;

pub use autograd::{no_grad, NoGradGuard};
pub use backend::{BinaryOp, UnaryOp};
pub use dtype::DType;
pub use error::{Error, Result};
pub use ops::attention::AttnOpts;
pub use ops::optim::{adamw_step, AdamW};
pub use tensor::{Device, Tensor};
