//! One decoder layer of the Llama/Qwen2 stack: attention block then MLP block, each a
//! residual branch after an RMSNorm, with the Hugging Face weight names
//! (`model.layers.N.self_attn.q_proj`, ...), built from Linear (with its LoRA adapter)
//! and filling a KvCache while decoding. [`super::transformer::Transformer::forward`]
//! runs the layers in turn, each plainly or as an activation checkpoint.

use super::config::Config;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::attention::AttnOpts;
use crate::tensor::{Device, Tensor};

/// y = x W^T + b, W of shape (out, in) as PyTorch stores it, plus an optional LoRA
/// adapter: y += scale * dropout(x) A^T B^T (PEFT's convention, scale = alpha / r).
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

/// A LoRA adapter: A `(r, in)`, B `(out, r)`.
#[derive(Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
}

/// Per-forward switches that reach every Linear.
#[derive(Clone, Debug, Default)]
pub struct LinearCtx {
    /// Run the base model only (the DPO reference under LoRA).
    pub disable_adapters: bool,
    /// Seed for LoRA dropout masks; None = no dropout (eval).
    pub dropout_seed: Option<u64>,
    /// Each input row's token, as (sequence << 32 | position) in the batch: a dropout mask
    /// row is drawn from (seed, layer, token), so a padded and a packed batch of the same
    /// sequences drop the same values. Filled in by [`super::Transformer::forward`]; None
    /// numbers the rows instead.
    pub token_keys: Option<std::sync::Arc<[u64]>>,
}

/// The dropout key of every token of a batch from its rotary positions: a row starts a
/// sequence, and so does a position that does not follow the one before (a packed row's
/// next sequence). Padded rows and packed sequences in the same order get the same keys.
pub fn token_keys(positions: &[Vec<usize>]) -> std::sync::Arc<[u64]> {
    let mut seq: u64 = 0;
    let mut out = Vec::with_capacity(positions.iter().map(Vec::len).sum());
    for (b, row) in positions.iter().enumerate() {
        for (t, &p) in row.iter().enumerate() {
            if (t == 0 && b > 0) || (t > 0 && p <= row[t - 1]) {
                seq += 1;
            }
            out.push(seq << 32 | p as u64);
        }
    }
    out.into()
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_ctx(
            x,
            &LinearCtx {
                disable_adapters: true,
                dropout_seed: None,
                token_keys: None,
            },
            0,
        )
    }

    /// [`Linear::forward_ctx`] of several layers over the same input (`salts[i]` for
    /// `lins[i]`). Without active adapters the products run as one
    /// [`Tensor::linear_many`] (one pass while decoding on the CPU), with the same bits.
    pub fn forward_many<const N: usize>(
        lins: [&Linear; N],
        x: &Tensor,
        ctx: &LinearCtx,
        salts: [u64; N],
    ) -> Result<[Tensor; N]> {
        let ys: Vec<Tensor> = if lins
            .iter()
            .all(|l| l.lora.is_none() || ctx.disable_adapters)
        {
            let ws: Vec<&Tensor> = lins.iter().map(|l| &l.weight).collect();
            let ys = x.linear_many(&ws)?;
            ys.into_iter()
                .zip(lins)
                .map(|(y, l)| match &l.bias {
                    Some(b) => y.add(b),
                    None => Ok(y),
                })
                .collect::<Result<_>>()?
        } else {
            lins.iter()
                .zip(salts)
                .map(|(l, salt)| l.forward_ctx(x, ctx, salt))
                .collect::<Result<_>>()?
        };
        Ok(ys
            .try_into()
            .unwrap_or_else(|_| unreachable!("one output per layer")))
    }

    /// Forward with adapters per `ctx`; `salt` makes each layer's dropout mask distinct.
    pub fn forward_ctx(&self, x: &Tensor, ctx: &LinearCtx, salt: u64) -> Result<Tensor> {
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.add(b)?;
        }
        if let (Some(l), false) = (&self.lora, ctx.disable_adapters) {
            let xd = match ctx.dropout_seed {
                Some(seed) if l.dropout > 0.0 => {
                    // inverted dropout: keep with probability 1-p, scale kept values by 1/(1-p)
                    use rayon::prelude::*;
                    let keep = 1.0 - l.dropout;
                    let s = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let c = x.shape().last().copied().unwrap_or(1).max(1);
                    let rows = x.numel() / c;
                    let keys = ctx.token_keys.as_deref().filter(|k| k.len() == rows);
                    let mut m = vec![0.0f32; x.numel()];
                    // one stream per (seed, layer, token): the mask of a token's row does not
                    // depend on where the token sits in the batch
                    m.par_chunks_mut(c).enumerate().for_each(|(r, row)| {
                        let key = keys.map_or(r as u64, |k| k[r]);
                        let mut g = crate::util::rng(
                            s ^ key.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93),
                        );
                        for v in row {
                            if rand::Rng::random::<f32>(&mut g) < keep {
                                *v = 1.0 / keep;
                            }
                        }
                    });
                    x.mul(&Tensor::from_vec(m, x.shape(), x.device())?)?
                }
                _ => x.clone(),
            };
            y = y.add(&xd.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?.scale(l.scale)?)?;
        }
        Ok(y)
    }
}

/// Keys and values of every layer, `(B, capacity, NKV, HD)`, resident on the device.
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Positions filled so far.
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(cfg: &Config, batch: usize, capacity: usize, device: Device) -> Result<KvCache> {
        let shape = [batch, capacity, cfg.num_key_value_heads, cfg.head_dim];
        let mk = || crate::ops::movement::empty(&shape, DType::F32, device);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for _ in 0..cfg.num_hidden_layers {
            k.push(mk()?);
            v.push(mk()?);
        }
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
        })
    }
}

#[derive(Clone)]
pub struct Layer {
    pub input_layernorm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub post_attention_layernorm: Tensor,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// What every decoder layer of one forward pass shares.
pub(super) struct LayerCtx {
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) nh: usize,
    pub(super) nkv: usize,
    pub(super) hd: usize,
    pub(super) eps: f32,
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    pub(super) attn: AttnOpts,
    pub(super) linear: LinearCtx,
}

impl Layer {
    fn linears(&self) -> [&Linear; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    /// Every tensor the layer reads: norms, weights, biases, LoRA adapters.
    pub(super) fn tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.input_layernorm, &self.post_attention_layernorm];
        for l in self.linears() {
            out.push(&l.weight);
            out.extend(&l.bias);
            if let Some(lora) = &l.lora {
                out.extend([&lora.a, &lora.b]);
            }
        }
        out
    }

    /// Layer `i` on the residual stream `h` `(B, T, C)`, writing its keys and values
    /// into `cache` at `offset` when given.
    pub(super) fn forward(
        &self,
        i: usize,
        h: &Tensor,
        c: &LayerCtx,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, nh, nkv, hd) = (c.b, c.t, c.nh, c.nkv, c.hd);
        // attention block: h += o_proj(attn(rope(q), rope(k), v))
        let x = h.rms_norm(&self.input_layernorm, c.eps)?;
        let lc = &c.linear;
        let salt = (i as u64) << 8;
        let [q, k, v] = Linear::forward_many(
            [&self.q_proj, &self.k_proj, &self.v_proj],
            &x,
            lc,
            [salt, salt + 1, salt + 2],
        )?;
        let q = q.reshape(&[b, t, nh, hd])?.rope(&c.cos, &c.sin)?;
        let k = k.reshape(&[b, t, nkv, hd])?.rope(&c.cos, &c.sin)?;
        let v = v.reshape(&[b, t, nkv, hd])?;
        let (k, v) = match cache {
            Some((kv, offset)) => {
                let win = kv.k[i].layout().narrow(1, offset, t)?;
                crate::ops::movement::copy_into(&k, &kv.k[i], &win)?;
                crate::ops::movement::copy_into(&v, &kv.v[i], &win)?;
                (
                    kv.k[i].narrow(1, 0, offset + t)?,
                    kv.v[i].narrow(1, 0, offset + t)?,
                )
            }
            None => (k, v),
        };
        let a = Tensor::attention(&q, &k, &v, &c.attn)?.reshape(&[b, t, nh * hd])?;
        let h = h.add(&self.o_proj.forward_ctx(&a, lc, salt + 3)?)?;
        // MLP block: h += down(silu(gate(x)) * up(x))
        let x = h.rms_norm(&self.post_attention_layernorm, c.eps)?;
        let [gate, up] = Linear::forward_many(
            [&self.gate_proj, &self.up_proj],
            &x,
            lc,
            [salt + 4, salt + 5],
        )?;
        let m = gate.swiglu(&up)?;
        h.add(&self.down_proj.forward_ctx(&m, lc, salt + 6)?)
    }
}

#[cfg(test)]
mod dropout_key_tests {
    use super::token_keys;

    #[test]
    fn padded_rows_and_packed_sequences_get_the_same_dropout_keys() {
        let key = |s: u64, p: u64| s << 32 | p;
        // two padded rows (the second's last position is padding)
        let padded = token_keys(&[vec![0, 1, 2], vec![0, 1, 2]]);
        assert_eq!(
            &padded[..],
            &[
                key(0, 0),
                key(0, 1),
                key(0, 2),
                key(1, 0),
                key(1, 1),
                key(1, 2)
            ]
        );
        // the same two sequences packed end to end in one row: positions restart
        let packed = token_keys(&[vec![0, 1, 2, 0, 1]]);
        assert_eq!(&packed[..], &padded[..5]);
        // three packed rows of one token each are three sequences
        assert_eq!(
            &token_keys(&[vec![4], vec![4], vec![4]])[..],
            &[key(0, 4), key(1, 4), key(2, 4)]
        );
    }
}
