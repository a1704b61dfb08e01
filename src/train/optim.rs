//! AdamW over named parameters (PyTorch semantics; no weight decay on biases and norm
//! weights, as the Hugging Face Trainer groups them), global gradient-norm clipping, and
//! the learning-rate schedules of transformers' `get_scheduler`.

use super::arena::{Arena, Gathered};
use crate::error::{Error, Result};
use crate::ops::optim::{adamw_step_clipped, AdamW};
use crate::tensor::Tensor;

/// `constant`, `linear`, `cosine`, `cosine_with_min_lr`, each after a linear warmup.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    Constant,
    Linear,
    Cosine,
    CosineWithMinLr,
}

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub kind: Scheduler,
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Floor of `cosine_with_min_lr`.
    pub min_lr: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based), as transformers computes it:
    /// warmup multiplies by step / warmup (so step 0 of a warmup uses lr 0), then
    /// `progress = (step - warmup) / (total - warmup)` drives the decay.
    pub fn lr_at(&self, step: usize) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.lr * step as f64 / w.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(w).max(1) as f64;
        let progress = ((step - w) as f64 / span).min(1.0);
        match self.kind {
            Scheduler::Constant => self.lr,
            Scheduler::Linear => self.lr * (1.0 - progress).max(0.0),
            Scheduler::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Scheduler::CosineWithMinLr => {
                self.min_lr
                    + (self.lr - self.min_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Where a data-parallel step's gradient all-reduce spent its time.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllReduceTimes {
    /// Bytes each rank sent into the all-reduce.
    pub bytes: usize,
    /// Gathering the gradients into the flat host buffer and scattering the sums back.
    pub stage_s: f64,
    /// Waiting at the barrier for the slowest rank's backward.
    pub wait_s: f64,
    /// The all-reduce itself.
    pub reduce_s: f64,
}

impl std::ops::AddAssign for AllReduceTimes {
    fn add_assign(&mut self, o: AllReduceTimes) {
        self.bytes += o.bytes;
        self.stage_s += o.stage_s;
        self.wait_s += o.wait_s;
        self.reduce_s += o.reduce_s;
    }
}

pub struct Optimizer {
    pub params: Vec<(String, Tensor)>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Optimizer steps taken.
    pub step: u32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// On the GPU, the clipping coefficient of [`clip_on_device`](Self::clip_on_device),
    /// applied inside the next AdamW update instead of by a pass over every gradient.
    clip_coef: Option<Tensor>,
    /// On the GPU, the parameters, gradients and moments in a few flat buffers.
    arena: Option<Arena>,
    /// This step's gradients once [`gather`](Self::gather) moved them into the arena.
    gathered: Option<Gathered>,
    /// Data parallelism: the host buffer the gradients are summed in, kept between steps.
    dp_buf: Vec<f32>,
}

/// Biases and norm weights take no weight decay (the HF Trainer's parameter groups).
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm"))
}

impl Optimizer {
    /// An optimizer over `params`. On the GPU (all f32) they are moved into the
    /// optimizer's [`Arena`]: each `&mut Tensor` becomes a leaf over its arena slot with
    /// the same values, so the model trains the moved tensors.
    pub fn new(mut params: Vec<(String, &mut Tensor)>, weight_decay: f32) -> Result<Optimizer> {
        for (name, p) in &params {
            if !p.requires_grad() {
                return Err(Error::invalid(
                    "optimizer",
                    format!("parameter {name} does not require grad"),
                ));
            }
        }
        let (arena, m, v) = if Arena::applies(&params) {
            let (a, m, v) = Arena::build(&mut params, decays)?;
            (Some(a), m, v)
        } else {
            let m = params
                .iter()
                .map(|(_, p)| p.zeros_like())
                .collect::<Result<_>>()?;
            let v = params
                .iter()
                .map(|(_, p)| p.zeros_like())
                .collect::<Result<_>>()?;
            (None, m, v)
        };
        let params = params
            .into_iter()
            .map(|(n, p)| (n, p.clone()))
            .collect::<Vec<_>>();
        Ok(Optimizer {
            arena,
            gathered: None,
            dp_buf: Vec::new(),
            params,
            m,
            v,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            clip_coef: None,
        })
    }

    /// Arena chunks (0 without an arena): a step runs AdamW in about this many dispatches.
    pub fn arena_chunks(&self) -> usize {
        self.arena.as_ref().map_or(0, |a| a.chunks())
    }

    /// Move the gradients into the arena (once per step); whether any parameter has one.
    fn gather(&mut self) -> Result<bool> {
        let Some(a) = &self.arena else {
            return Ok(self.params.iter().any(|(_, p)| p.grad().is_some()));
        };
        if self.gathered.is_none() {
            let g = a.gather(&self.params)?;
            if !g.any {
                return Ok(false);
            }
            self.gathered = Some(g);
        }
        Ok(true)
    }

    /// Data parallelism: sum every rank's gradients, so each rank holds the gradient of
    /// the whole step and takes the same AdamW update. One all-reduce over one flat f32
    /// buffer (the gradients end to end in parameter order, then a has-gradient flag per
    /// parameter), staged through host memory; a parameter gets a gradient where any rank
    /// gave it one. A no-op with one rank. Call before [`grad_norm_sq`](Self::grad_norm_sq).
    pub fn all_reduce_grads(&mut self) -> Result<AllReduceTimes> {
        let mut times = AllReduceTimes::default();
        if crate::dist::size() <= 1 {
            return Ok(times);
        }
        let t0 = std::time::Instant::now();
        let _ng = crate::autograd::NoGradGuard::new();
        let grads: Vec<Option<Tensor>> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let total: usize = self.params.iter().map(|(_, p)| p.numel()).sum();
        let device = self
            .params
            .first()
            .map_or(crate::tensor::Device::Cpu, |(_, p)| p.device());
        let mut flat = std::mem::take(&mut self.dp_buf);
        flat.clear();
        flat.reserve(total + grads.len());
        if device == crate::tensor::Device::Cpu {
            // straight from each f32 gradient's storage: one copy in, one copy out
            for ((_, p), g) in self.params.iter().zip(&grads) {
                match g {
                    Some(g) if g.dtype() == crate::dtype::DType::F32 => {
                        g.cpu_read("all_reduce_grads", |x: &[f32]| flat.extend_from_slice(x))?
                    }
                    Some(g) => flat.extend(g.to_vec_f32()?),
                    None => flat.resize(flat.len() + p.numel(), 0.0),
                }
            }
        } else {
            // one readback for the lot: missing gradients are zeros
            let mut parts = Vec::with_capacity(grads.len());
            for ((_, p), g) in self.params.iter().zip(&grads) {
                parts.push(match g {
                    Some(g) => g
                        .to_dtype(crate::dtype::DType::F32)?
                        .reshape(&[p.numel()])?,
                    None => Tensor::zeros(&[p.numel()], device)?,
                });
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            if !refs.is_empty() {
                flat.extend(Tensor::cat(&refs, 0)?.to_vec_f32()?);
            }
        }
        flat.extend(grads.iter().map(|g| g.is_some() as u8 as f32));
        drop(grads);
        times.stage_s = t0.elapsed().as_secs_f64();
        // the wait for the slowest rank, apart from the transfer itself
        let t1 = std::time::Instant::now();
        crate::dist::barrier();
        times.wait_s = t1.elapsed().as_secs_f64();
        let t2 = std::time::Instant::now();
        crate::dist::all_reduce_f32(&mut flat);
        times.reduce_s = t2.elapsed().as_secs_f64();
        times.bytes = std::mem::size_of_val(&flat[..]);
        let t3 = std::time::Instant::now();
        let mut at = 0;
        for (i, (_, p)) in self.params.iter().enumerate() {
            let n = p.numel();
            if flat[total + i] > 0.0 {
                let g = Tensor::from_vec(flat[at..at + n].to_vec(), p.shape(), p.device())?;
                p.set_grad(Some(g.to_dtype(p.dtype())?));
            }
            at += n;
        }
        self.dp_buf = flat;
        times.stage_s += t3.elapsed().as_secs_f64();
        Ok(times)
    }

    /// The squared L2 norm of all gradients together (before clipping), as a `(1,)`
    /// tensor on the device: nothing is read back.
    pub fn grad_norm_sq(&mut self) -> Result<Option<Tensor>> {
        let _ng = crate::autograd::NoGradGuard::new();
        if self.arena.is_some() {
            if !self.gather()? {
                return Ok(None);
            }
            let loose = &self.gathered.as_ref().unwrap().loose;
            return self.arena.as_ref().unwrap().norm_sq(loose).map(Some);
        }
        let on_gpu = self.params.iter().any(|(_, p)| {
            p.grad()
                .is_some_and(|g| g.device() == crate::tensor::Device::Gpu)
        });
        if on_gpu {
            // one dispatch per gradient, not three (square, sum, add); a strided gradient
            // is made dense here once, for this and for the AdamW step
            let mut grads = Vec::new();
            for (_, p) in &self.params {
                if let Some(g) = p.grad() {
                    let g = g.contiguous()?;
                    p.set_grad(Some(g.clone()));
                    grads.push(g);
                }
            }
            return crate::backend::gpu::kernels::sum_squares(&grads).map(Some);
        }
        // f32 on the CPU: one fused pass per gradient, summed in f64
        let grads: Vec<Tensor> = self.params.iter().filter_map(|(_, p)| p.grad()).collect();
        if !grads.is_empty() && grads.iter().all(|g| g.dtype() == crate::dtype::DType::F32) {
            let mut total = 0.0f64;
            for g in &grads {
                total += crate::backend::cpu::sum_squares(g)?;
            }
            return Tensor::from_vec(vec![total as f32], &[1], crate::tensor::Device::Cpu)
                .map(Some);
        }
        let mut total: Option<Tensor> = None;
        for (_, p) in &self.params {
            if let Some(g) = p.grad() {
                let s = g.mul(&g)?.sum_all()?.reshape(&[1])?;
                total = Some(match total {
                    Some(t) => t.add(&s)?,
                    None => s,
                });
            }
        }
        Ok(total)
    }

    /// Scale every gradient by min(1, max_norm / (norm + 1e-6)) (torch's
    /// clip_grad_norm_), the coefficient computed on the device from `norm_sq`.
    /// On the GPU the gradients stay as they are and the next [`step`](Self::step) scales
    /// them inside the AdamW kernel.
    pub fn clip_on_device(&mut self, norm_sq: &Tensor, max_norm: f64) -> Result<()> {
        if max_norm <= 0.0 {
            return Ok(());
        }
        let _ng = crate::autograd::NoGradGuard::new();
        // coef = max_norm / (sqrt(n2) + 1e-6); min(1, coef) = 1 - relu(1 - coef)
        let coef = norm_sq
            .sqrt()?
            .add_scalar(1e-6)?
            .powf(-1.0)?
            .scale(max_norm)?
            .affine(-1.0, 1.0)?
            .relu()?
            .affine(-1.0, 1.0)?;
        if coef.device() == crate::tensor::Device::Gpu {
            self.clip_coef = Some(coef);
            return Ok(());
        }
        // on the CPU the coefficient is a number at hand: gradients already within the
        // bound are left as they are (a scale by 1 would only copy them)
        let c = coef.to_vec_f64()?[0];
        if c == 1.0 {
            return Ok(());
        }
        for (_, p) in &self.params {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.scale(c)?));
            }
        }
        Ok(())
    }

    /// One AdamW update with learning rate `lr`, then clear the gradients.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let (beta1, beta2, eps, wd, step) = (
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.step,
        );
        let hyper = move |decay: bool| AdamW {
            lr: lr as f32,
            beta1,
            beta2,
            eps,
            weight_decay: if decay { wd } else { 0.0 },
            step,
        };
        if self.arena.is_some() {
            if self.gather()? {
                let a = self.arena.as_ref().unwrap();
                let got = self.gathered.take().unwrap();
                let clip = self.clip_coef.as_ref();
                // whole chunks when every arena parameter has a gradient (a transformer's
                // always do), else one update per parameter that has one
                let whole = !got.missing.iter().any(|&m| m);
                if whole {
                    a.adamw(&hyper(true), clip)?;
                }
                for (i, (name, p)) in self.params.iter().enumerate() {
                    let g = match &got.loose[i] {
                        Some(g) => g.clone(),
                        None if whole || got.missing[i] => continue,
                        None => match a.grad(i, p.shape())? {
                            Some(g) => g,
                            None => continue,
                        },
                    };
                    let h = hyper(decays(name));
                    adamw_step_clipped(p, &g, &self.m[i], &self.v[i], &h, clip)?;
                }
            }
            self.clip_coef = None;
            self.zero_grad();
            return Ok(());
        }
        for (i, (name, p)) in self.params.iter().enumerate() {
            let Some(g) = p.grad() else { continue };
            let g = crate::autograd::no_grad(|| g.contiguous())?;
            let h = hyper(decays(name));
            adamw_step_clipped(p, &g, &self.m[i], &self.v[i], &h, self.clip_coef.as_ref())?;
        }
        self.clip_coef = None;
        self.zero_grad();
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        self.gathered = None;
        for (_, p) in &self.params {
            p.zero_grad();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kind: Scheduler, warmup: usize) -> Schedule {
        Schedule {
            kind,
            lr: 1.0,
            warmup_steps: warmup,
            total_steps: 10,
            min_lr: 0.1,
        }
    }

    #[test]
    fn schedules_follow_transformers() {
        // warmup: step / warmup (step 0 uses lr 0), then the decay over the remaining steps
        let c = s(Scheduler::Constant, 2);
        assert_eq!(
            [c.lr_at(0), c.lr_at(1), c.lr_at(2), c.lr_at(9)],
            [0.0, 0.5, 1.0, 1.0]
        );
        let l = s(Scheduler::Linear, 2);
        // (10 - step) / (10 - 2)
        assert_eq!([l.lr_at(2), l.lr_at(6), l.lr_at(9)], [1.0, 0.5, 0.125]);
        let k = s(Scheduler::Cosine, 0);
        // 0.5 (1 + cos(pi step / 10))
        assert!((k.lr_at(5) - 0.5).abs() < 1e-12 && (k.lr_at(0) - 1.0).abs() < 1e-12);
        assert!((k.lr_at(9) - 0.5 * (1.0 + (0.9 * std::f64::consts::PI).cos())).abs() < 1e-12);
        let m = s(Scheduler::CosineWithMinLr, 0);
        // min + (lr - min) 0.5 (1 + cos(pi progress))
        assert!((m.lr_at(5) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!(m.lr_at(10) >= 0.1 - 1e-12);
    }

    #[test]
    fn weight_decay_skips_biases_and_norms() {
        assert!(decays("model.layers.0.self_attn.q_proj.weight"));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias"));
        assert!(!decays("model.layers.0.input_layernorm.weight"));
        assert!(!decays("model.norm.weight"));
    }
}
