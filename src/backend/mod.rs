//! The two backends. `cpu` holds the readable reference loops; `gpu` holds the wgpu
//! context and the dispatch code for the WGSL kernels in `shaders/`. Both implement the
//! op codes defined here, so a test can hold one to the other.

pub mod cpu;
pub mod gpu;

/// Elementwise unary ops. `Powf(p)` is `x^p`; `Affine(a, b)` is `a*x + b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Silu,
    Sigmoid,
    LogSigmoid,
    Relu,
    Abs,
    Powf(f64),
    Affine(f64, f64),
}

impl UnaryOp {
    /// The code the shaders switch on (`OP` specialisation).
    pub fn code(self) -> u32 {
        match self {
            UnaryOp::Neg => 0,
            UnaryOp::Exp => 1,
            UnaryOp::Log => 2,
            UnaryOp::Sqrt => 3,
            UnaryOp::Rsqrt => 4,
            UnaryOp::Silu => 5,
            UnaryOp::Sigmoid => 6,
            UnaryOp::LogSigmoid => 7,
            UnaryOp::Relu => 8,
            UnaryOp::Abs => 9,
            UnaryOp::Powf(_) => 10,
            UnaryOp::Affine(..) => 11,
        }
    }
    /// The two scalar parameters (f64 so that the f64 reference stays exact; the GPU
    /// uniform carries them as f32).
    pub fn params(self) -> (f64, f64) {
        match self {
            UnaryOp::Powf(p) => (p, 0.0),
            UnaryOp::Affine(a, b) => (a, b),
            _ => (0.0, 0.0),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Silu => "silu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::LogSigmoid => "log_sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Abs => "abs",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Affine(..) => "affine",
        }
    }
}

/// Elementwise binary ops with broadcasting. Comparisons return 1.0 or 0.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl BinaryOp {
    pub fn code(self) -> u32 {
        self as u32
    }
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Eq => "eq",
        }
    }
}

/// Reductions along one dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// The sizes and strides of one causal/grouped-query attention call. Queries are
/// `(B, T, NH, HD)`, keys and values `(B, S, NKV, HD)`; heads and the head dim are dense,
/// batch and sequence strides are free (so a KV cache can be viewed without a copy).
/// Query `t` sits at absolute position `t + S - T`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    pub s: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    pub scale: f64,
    pub causal: bool,
    /// (batch stride, sequence stride, element offset) of q, k and v.
    pub q_str: (usize, usize, usize),
    pub k_str: (usize, usize, usize),
    pub v_str: (usize, usize, usize),
}

/// Log-sum-exp stored for rows that see no key at all: large, so that exp(s - lse) = 0.
pub const LSE_MASKED: f32 = 1.0e30;

pub use cpu::matmul::{Gemm, Operand};

/// Shapes of one rope call: x (B, T, H, HD); tables (1 or B, T, HD).
#[derive(Clone, Copy, Debug)]
pub struct RopeDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hd: usize,
    pub table_batched: bool,
}

/// One AdamW step in place, PyTorch semantics (decoupled decay, bias correction):
///   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
///   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count after this update.
    pub step: u32,
}

impl AdamW {
    pub fn bias_corrections(&self) -> (f32, f32) {
        let t = self.step as i32;
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}
