//! One decoder for Llama and Qwen2, reading top-down: Linear -> Layer (attention + MLP)
//! -> Transformer. Weights are named exactly as in the Hugging Face checkpoint
//! (`model.layers.3.self_attn.q_proj.weight`), so a checkpoint key greps to its use here.
//! Activations are (B, T, C); attention works on (B, T, heads, HD) without transposes.

use super::config::Config;
use super::rope::Rope;
use super::weights::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::attention::AttnOpts;
use crate::tensor::{Device, Tensor};

/// y = x W^T + b, W of shape (out, in) as PyTorch stores it.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
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

/// What a forward pass takes besides the ids.
#[derive(Default)]
pub struct Forward<'a> {
    /// Rotary position of each token, per row; default `cache.len + t`.
    pub positions: Option<Vec<Vec<usize>>>,
    /// Per-row valid key range `(B, 2)` u32 (padding).
    pub kv_ranges: Option<Tensor>,
    pub cache: Option<&'a mut KvCache>,
    /// Also return the residual stream after the embedding and after every layer.
    pub hidden_states: bool,
    /// Project only the last position to logits (generation).
    pub last_only: bool,
}

pub struct Output {
    /// `(B, T, V)`, or `(B, 1, V)` with `last_only`.
    pub logits: Tensor,
    /// `hidden[0]` = embeddings, `hidden[i + 1]` = output of layer i (when asked).
    pub hidden: Vec<Tensor>,
    pub final_norm: Option<Tensor>,
}

#[derive(Clone)]
pub struct Transformer {
    pub cfg: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// None when the embeddings are tied.
    pub lm_head: Option<Linear>,
    pub rope: Rope,
    pub device: Device,
}

/// Supplies a weight by (HF name, shape, is a 2-D matrix).
type GetWeight<'a> = dyn FnMut(&str, &[usize], bool) -> Result<Tensor> + 'a;

/// How to place weights when loading.
#[derive(Clone, Copy, Debug)]
pub struct LoadOpts {
    pub device: Device,
    /// Keep f16/bf16 matrices in 16 bits (frozen inference; kernels widen on the fly).
    pub keep_16bit: bool,
    /// f32 leaves that accumulate gradients (training).
    pub trainable: bool,
}

impl Transformer {
    /// The tensors this config expects: (HF name, shape, is a 2-D matrix).
    pub fn expected(cfg: &Config) -> Vec<(String, Vec<usize>, bool)> {
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, c], true)];
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![c], false));
            for (name, o, inp, bias) in [
                ("q_proj", qd, c, cfg.qkv_bias),
                ("k_proj", kvd, c, cfg.qkv_bias),
                ("v_proj", kvd, c, cfg.qkv_bias),
                ("o_proj", c, qd, cfg.o_bias),
            ] {
                out.push((format!("{p}.self_attn.{name}.weight"), vec![o, inp], true));
                if bias {
                    out.push((format!("{p}.self_attn.{name}.bias"), vec![o], false));
                }
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![c],
                false,
            ));
            for (name, o, inp) in [("gate_proj", f, c), ("up_proj", f, c), ("down_proj", c, f)] {
                out.push((format!("{p}.mlp.{name}.weight"), vec![o, inp], true));
                if cfg.mlp_bias {
                    out.push((format!("{p}.mlp.{name}.bias"), vec![o], false));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), vec![c], false));
        if !cfg.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, c], true));
        }
        out
    }

    /// Build from `get(name, shape, is_matrix)`, in the order of [`Transformer::expected`].
    fn assemble(
        cfg: &Config,
        device: Device,
        mut get: impl FnMut(&str, &[usize], bool) -> Result<Tensor>,
    ) -> Result<Transformer> {
        fn lin(get: &mut GetWeight, p: &str, o: usize, i: usize, bias: bool) -> Result<Linear> {
            let weight = get(&format!("{p}.weight"), &[o, i], true)?;
            let bias = if bias {
                Some(get(&format!("{p}.bias"), &[o], false)?)
            } else {
                None
            };
            Ok(Linear { weight, bias })
        }
        let g: &mut GetWeight = &mut get;
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let embed_tokens = g("model.embed_tokens.weight", &[v, c], true)?;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_layernorm: g(&format!("{p}.input_layernorm.weight"), &[c], false)?,
                q_proj: lin(g, &format!("{p}.self_attn.q_proj"), qd, c, cfg.qkv_bias)?,
                k_proj: lin(g, &format!("{p}.self_attn.k_proj"), kvd, c, cfg.qkv_bias)?,
                v_proj: lin(g, &format!("{p}.self_attn.v_proj"), kvd, c, cfg.qkv_bias)?,
                o_proj: lin(g, &format!("{p}.self_attn.o_proj"), c, qd, cfg.o_bias)?,
                post_attention_layernorm: g(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[c],
                    false,
                )?,
                gate_proj: lin(g, &format!("{p}.mlp.gate_proj"), f, c, cfg.mlp_bias)?,
                up_proj: lin(g, &format!("{p}.mlp.up_proj"), f, c, cfg.mlp_bias)?,
                down_proj: lin(g, &format!("{p}.mlp.down_proj"), c, f, cfg.mlp_bias)?,
            });
        }
        let norm = g("model.norm.weight", &[c], false)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(lin(g, "lm_head", v, c, false)?)
        };
        Ok(Transformer {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(cfg),
            device,
        })
    }

    /// Load every weight of `cfg` from a checkpoint.
    pub fn load(cfg: &Config, ckpt: &Checkpoint, opts: LoadOpts) -> Result<Transformer> {
        let why = |shape: &[usize]| {
            format!(
                " from config.json (hidden_size={}, intermediate_size={}, vocab_size={}, heads={}x{} head_dim, kv heads={}; shape {shape:?})",
                cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
            )
        };
        Transformer::assemble(cfg, opts.device, |name, shape, matrix| {
            let keep = opts.keep_16bit && matrix && !opts.trainable;
            let t = ckpt.load(name, shape, opts.device, keep, &why(shape))?;
            Ok(if opts.trainable {
                t.requires_grad_()
            } else {
                t
            })
        })
    }

    /// A model of this config with random weights (std 0.02, norms 1), for benches.
    pub fn random(cfg: &Config, device: Device, dtype: DType, seed: u64) -> Result<Transformer> {
        let mut k = seed;
        Transformer::assemble(cfg, device, |_, shape, matrix| {
            k += 1;
            if shape.len() == 1 && !matrix {
                return Tensor::rand_uniform(shape, 0.9, 1.1, k, device);
            }
            let t = Tensor::randn(shape, 0.02, k, Device::Cpu)?;
            let t = if matrix && dtype != DType::F32 {
                t.to_dtype(dtype)?
            } else {
                t
            };
            t.to_device(device)
        })
    }

    /// Every parameter by its Hugging Face name, in checkpoint order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.clone(),
            ));
            for (n, lin) in [
                ("q_proj", &l.q_proj),
                ("k_proj", &l.k_proj),
                ("v_proj", &l.v_proj),
                ("o_proj", &l.o_proj),
            ] {
                out.push((format!("{p}.self_attn.{n}.weight"), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.self_attn.{n}.bias"), b.clone()));
                }
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.clone(),
            ));
            for (n, lin) in [
                ("gate_proj", &l.gate_proj),
                ("up_proj", &l.up_proj),
                ("down_proj", &l.down_proj),
            ] {
                out.push((format!("{p}.mlp.{n}.weight"), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.mlp.{n}.bias"), b.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.weight.clone()));
        }
        out
    }

    pub fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    /// Forward `ids` (row-major `(B, T)`), checked against the vocabulary first.
    pub fn forward(&self, ids: &[u32], b: usize, t: usize, mut fwd: Forward) -> Result<Output> {
        let cfg = &self.cfg;
        if ids.len() != b * t || t == 0 {
            return Err(Error::invalid(
                "forward",
                format!("{} ids do not make a ({b}, {t}) batch", ids.len()),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
            return Err(Error::invalid(
                "forward",
                format!(
                    "token id {bad} is out of range: the vocabulary has {} tokens (ids 0..{})",
                    cfg.vocab_size,
                    cfg.vocab_size - 1
                ),
            ));
        }
        let offset = fwd.cache.as_ref().map_or(0, |c| c.len);
        if let Some(c) = &fwd.cache {
            if offset + t > c.capacity || c.k[0].shape()[0] != b {
                return Err(Error::invalid("forward", format!("kv cache holds {} rows x {} positions; asked for {b} rows up to position {}", c.k[0].shape()[0], c.capacity, offset + t)));
            }
        }
        let positions = fwd
            .positions
            .take()
            .unwrap_or_else(|| vec![(offset..offset + t).collect(); b]);
        let (cos, sin) = self.rope.tables(&positions, self.device)?;
        let ids_t = Tensor::from_u32(ids.to_vec(), &[b, t], self.device)?;
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let eps = cfg.rms_norm_eps as f32;
        let attn = AttnOpts {
            causal: true,
            scale: None,
            kv_ranges: fwd.kv_ranges.clone(),
        };
        let mut h = self.embed_tokens.embedding(&ids_t)?; // (B, T, C)
        let mut hidden = Vec::new();
        if fwd.hidden_states {
            hidden.push(h.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            // attention block: h += o_proj(attn(rope(q), rope(k), v))
            let x = h.rms_norm(&layer.input_layernorm, eps)?;
            let q = layer
                .q_proj
                .forward(&x)?
                .reshape(&[b, t, nh, hd])?
                .rope(&cos, &sin)?;
            let k = layer
                .k_proj
                .forward(&x)?
                .reshape(&[b, t, nkv, hd])?
                .rope(&cos, &sin)?;
            let v = layer.v_proj.forward(&x)?.reshape(&[b, t, nkv, hd])?;
            let (k, v) = match fwd.cache.as_deref_mut() {
                Some(c) => {
                    let win = c.k[i].layout().narrow(1, offset, t)?;
                    crate::ops::movement::copy_into(&k, &c.k[i], &win)?;
                    crate::ops::movement::copy_into(&v, &c.v[i], &win)?;
                    (
                        c.k[i].narrow(1, 0, offset + t)?,
                        c.v[i].narrow(1, 0, offset + t)?,
                    )
                }
                None => (k, v),
            };
            let a = Tensor::attention(&q, &k, &v, &attn)?.reshape(&[b, t, nh * hd])?;
            h = h.add(&layer.o_proj.forward(&a)?)?;
            // MLP block: h += down(silu(gate(x)) * up(x))
            let x = h.rms_norm(&layer.post_attention_layernorm, eps)?;
            let m = layer
                .gate_proj
                .forward(&x)?
                .swiglu(&layer.up_proj.forward(&x)?)?;
            h = h.add(&layer.down_proj.forward(&m)?)?;
            if fwd.hidden_states {
                hidden.push(h.clone());
            }
        }
        if let Some(c) = fwd.cache {
            c.len = offset + t;
        }
        let hn = h.rms_norm(&self.norm, eps)?;
        let hl = if fwd.last_only {
            hn.narrow(1, t - 1, 1)?
        } else {
            hn.clone()
        };
        let logits = match &self.lm_head {
            Some(head) => head.forward(&hl)?,
            None => hl.matmul(&self.embed_tokens.t()?)?,
        };
        Ok(Output {
            logits,
            hidden,
            final_norm: fwd.hidden_states.then_some(hn),
        })
    }
}
