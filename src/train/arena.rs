//! The optimizer's flat arena on the GPU, as in llm.c: every trainable f32 parameter is
//! moved, once, into a few large buffers, with its gradient, first and second moment in
//! three more laid out the same way. The global gradient norm and the AdamW update then
//! run over whole chunks, a handful of dispatches a step instead of one or more per
//! tensor (Qwen2.5-0.5B has 290 parameter tensors).
//!
//! Layout: parameters are grouped by weight decay (a chunk has one decay), and each
//! starts on the device's binding alignment, so that a parameter is an ordinary tensor
//! over a [`GpuBuffer::view`] the kernels bind as they bind any buffer. The padding
//! between parameters is zero in all four buffers and stays zero: AdamW maps
//! (p, g, m, v) = 0 to 0. Chunks hold at most 1 GiB (and `max_buffer_size`); a tensor
//! larger than that stays in its own buffer and takes the per-tensor path.
//!
//! Gradients are produced by autograd in their own buffers. Before the norm, each is
//! copied into its slot of the gradient chunk (a buffer copy, not a dispatch) and
//! released, so the step's peak memory is the same as without the arena.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::gpu::{self, kernels, GpuBuffer};
use crate::backend::AdamW;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::{Device, Storage, Tensor};

/// Most bytes in one chunk.
const CHUNK_BYTES: u64 = 1 << 30;

static CHUNK_LIMIT: AtomicU64 = AtomicU64::new(CHUNK_BYTES);

/// Lower the chunk size (tests: several chunks and parameters left outside the arena on
/// a tiny model); `None` restores 1 GiB. Applies to optimizers built afterwards.
pub fn set_chunk_limit(bytes: Option<u64>) {
    CHUNK_LIMIT.store(bytes.unwrap_or(CHUNK_BYTES), Ordering::Relaxed);
}

/// Four same-layout buffers: parameters, gradients, first and second moments, each as a
/// flat `(numel,)` f32 tensor (`numel` includes the padding).
struct Chunk {
    decay: bool,
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
}

/// Where one parameter lives: (chunk, first element, element count).
type Slot = (usize, usize, usize);

pub struct Arena {
    chunks: Vec<Chunk>,
    /// Per parameter, in the optimizer's order; `None` for one kept in its own buffer.
    slots: Vec<Option<Slot>>,
}

/// The gradients of one step, moved by [`Arena::gather`].
pub struct Gathered {
    /// Per parameter kept in its own buffer, its gradient (dense); `None` elsewhere.
    pub loose: Vec<Option<Tensor>>,
    /// Whether any parameter had a gradient.
    pub any: bool,
    /// The arena parameters that had none this step (their moments must not move).
    pub missing: Vec<bool>,
}

fn flat(buf: GpuBuffer, n: usize) -> Tensor {
    Tensor::from_storage(Storage::Gpu(buf), &[n], DType::F32)
}

/// The elements from `at` of a chunk tensor, as a tensor of `shape` over its buffer.
fn slot_view(chunk: &Tensor, at: usize, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let view = chunk.gpu_buf().view(4 * at as u64, 4 * n as u64)?;
    Ok(Tensor::from_storage(Storage::Gpu(view), shape, DType::F32))
}

impl Arena {
    /// Move `params` (all f32 on the GPU) into an arena: each `&mut Tensor` is replaced by
    /// a trainable leaf over its slot, holding the same values. Returns the arena and each
    /// parameter's moments (views of the moment chunks; fresh zeros for a parameter kept
    /// in its own buffer).
    pub fn build(
        params: &mut [(String, &mut Tensor)],
        decays: impl Fn(&str) -> bool,
    ) -> Result<(Arena, Vec<Tensor>, Vec<Tensor>)> {
        let ctx = gpu::context()?;
        let align = ctx.binding_align() as usize / 4;
        let cap = (CHUNK_LIMIT
            .load(Ordering::Relaxed)
            .min(ctx.max_buffer_size())
            / 4) as usize
            / align
            * align;
        // lay out: (decay, elements used) per chunk
        let mut layout: Vec<(bool, usize)> = Vec::new();
        let mut slots = Vec::with_capacity(params.len());
        for (name, p) in params.iter() {
            let n = p.numel();
            let padded = n.div_ceil(align).max(1) * align;
            if padded > cap {
                slots.push(None);
                continue;
            }
            let decay = decays(name);
            let c = match layout
                .iter()
                .rposition(|&(d, used)| d == decay && used + padded <= cap)
            {
                Some(c) => c,
                None => {
                    layout.push((decay, 0));
                    layout.len() - 1
                }
            };
            slots.push(Some((c, layout[c].1, n)));
            layout[c].1 += padded;
        }
        let mut chunks = Vec::with_capacity(layout.len());
        for &(decay, n) in &layout {
            let mk = |what| Ok::<_, crate::error::Error>(flat(ctx.alloc_shared(4 * n, what)?, n));
            chunks.push(Chunk {
                decay,
                p: mk("arena p")?,
                g: mk("arena g")?,
                m: mk("arena m")?,
                v: mk("arena v")?,
            });
        }
        let (mut ms, mut vs) = (Vec::new(), Vec::new());
        for ((_, p), slot) in params.iter_mut().zip(&slots) {
            let Some((c, at, n)) = *slot else {
                ms.push(p.zeros_like()?);
                vs.push(p.zeros_like()?);
                continue;
            };
            let src = crate::autograd::no_grad(|| p.contiguous())?;
            let ch = &chunks[c];
            ctx.copy(
                src.gpu_buf(),
                4 * src.layout().offset as u64,
                ch.p.gpu_buf(),
                4 * at as u64,
                4 * n as u64,
            );
            let shape = p.shape().to_vec();
            **p = slot_view(&ch.p, at, &shape)?.requires_grad_();
            ms.push(slot_view(&ch.m, at, &shape)?);
            vs.push(slot_view(&ch.v, at, &shape)?);
        }
        // the parameters' old buffers went back to the pool: give them back to the driver
        ctx.trim_pool();
        Ok((Arena { chunks, slots }, ms, vs))
    }

    /// Whether `params` (the optimizer's) qualify: all f32 on the GPU.
    pub fn applies(params: &[(String, &mut Tensor)]) -> bool {
        !params.is_empty()
            && params
                .iter()
                .all(|(_, p)| p.device() == Device::Gpu && p.dtype() == DType::F32)
    }

    /// Copy each parameter's gradient into its slot of the gradient chunk and release it
    /// (a slot without a gradient is zeroed, so it adds nothing to the norm).
    pub fn gather(&self, params: &[(String, Tensor)]) -> Result<Gathered> {
        let ctx = gpu::context()?;
        let mut loose = Vec::with_capacity(params.len());
        let mut missing = vec![false; params.len()];
        let mut any = false;
        for (i, ((_, p), slot)) in params.iter().zip(&self.slots).enumerate() {
            let g = p.grad();
            any |= g.is_some();
            let Some((c, at, n)) = *slot else {
                let g = g
                    .map(|g| crate::autograd::no_grad(|| g.contiguous()))
                    .transpose()?;
                loose.push(g);
                continue;
            };
            loose.push(None);
            let dst = self.chunks[c].g.gpu_buf();
            match g {
                Some(g) => {
                    let g = crate::autograd::no_grad(|| g.contiguous())?;
                    let off = 4 * g.layout().offset as u64;
                    ctx.copy(g.gpu_buf(), off, dst, 4 * at as u64, 4 * n as u64);
                    p.set_grad(None);
                }
                None => {
                    missing[i] = true;
                    ctx.clear_range(dst, 4 * at as u64, 4 * n as u64)
                }
            }
        }
        Ok(Gathered {
            loose,
            any,
            missing,
        })
    }

    /// The squared norm of every gradient: the chunks' and the loose ones'.
    pub fn norm_sq(&self, loose: &[Option<Tensor>]) -> Result<Tensor> {
        let mut xs: Vec<Tensor> = self.chunks.iter().map(|c| c.g.clone()).collect();
        xs.extend(loose.iter().flatten().cloned());
        kernels::sum_squares(&xs)
    }

    /// The chunks' AdamW updates (the loose parameters are the caller's), with
    /// `h.weight_decay` where a chunk decays and 0 where it does not. Only for a step
    /// where every arena parameter had a gradient: PyTorch leaves a parameter without one
    /// alone, and a chunk update would still move it (its moments decay).
    pub fn adamw(&self, h: &AdamW, clip: Option<&Tensor>) -> Result<()> {
        for c in &self.chunks {
            let h = AdamW {
                weight_decay: if c.decay { h.weight_decay } else { 0.0 },
                ..*h
            };
            kernels::adamw(&c.p, &c.g, &c.m, &c.v, &h, clip)?;
        }
        Ok(())
    }

    /// Parameter `i`'s gradient slot as a tensor of its `shape` (`None` where loose).
    pub fn grad(&self, i: usize, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some((c, at, _)) = self.slots[i] else {
            return Ok(None);
        };
        slot_view(&self.chunks[c].g, at, shape).map(Some)
    }

    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }
}
