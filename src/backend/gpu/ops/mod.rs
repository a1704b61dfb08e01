//! One function per GPU op: check the inputs, allocate the outputs from the pool, build
//! the uniform (shapes, strides, scalars) and record the dispatch. Nothing here waits for
//! the GPU. The matching WGSL lives in `shaders/<family>.wgsl`; each uniform below is
//! written in the field order of that shader's `Params` struct.
//!
//! One file per op family, named like `ops/` and `shaders/`: `rmsnorm.rs` dispatches
//! `shaders/rmsnorm.wgsl`, which implements `ops/rmsnorm.rs`.

mod adamw;
mod attention;
mod cast;
mod common;
mod copy;
mod elementwise;
mod embedding;
mod logprob;
mod matmul;
mod reduce;
mod rmsnorm;
mod rope;
mod sample;
mod softmax;
mod swiglu;

pub use adamw::adamw;
pub use attention::{attention, attention_bwd};
pub use cast::cast;
pub use common::empty;
pub use copy::{copy, fill, fill_words};
pub use elementwise::{binary, unary, unary_grad, where_select};
pub use embedding::{embedding, embedding_bwd};
pub use logprob::{token_logprobs, token_logprobs_bwd};
pub use matmul::{gemm, gemm_acc};
pub use reduce::{reduce, scatter_dim, sum_squares};
pub use rmsnorm::{rmsnorm, rmsnorm_bwd};
pub use rope::rope;
pub use sample::{sample_rows, SampleRule};
pub use softmax::softmax;
pub use swiglu::{swiglu, swiglu_bwd};
