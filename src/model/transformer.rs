//! One decoder for Llama and Qwen2: the Transformer over its layers (`layer.rs`: Linear
//! -> Layer, attention + MLP). Weights are named exactly as in the Hugging Face checkpoint
//! (`model.layers.3.self_attn.q_proj.weight`), so a checkpoint key greps to its use here.
//! Activations are (B, T, C); attention works on (B, T, heads, HD) without transposes.

use super::config::Config;
use super::rope::Rope;
use super::weights::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::attention::AttnOpts;
use crate::tensor::{Device, Tensor};

use super::layer::LayerCtx;
pub use super::layer::{KvCache, Layer, Linear, LinearCtx, Lora};

/// What a forward pass takes besides the ids.
#[derive(Default)]
pub struct Forward<'a> {
    /// Rotary position of each token, per row; default `cache.len + t`.
    pub positions: Option<Vec<Vec<usize>>>,
    /// Per-row valid key range `(B, 2)` u32 (padding).
    pub kv_ranges: Option<Tensor>,
    /// Rows whose first cached positions equal another row's (the samples of one
    /// prompt): a hint for the attention, see [`AttnOpts::kv_shared`].
    pub kv_shared: Option<std::sync::Arc<[u32]>>,
    pub cache: Option<&'a mut KvCache>,
    /// Also return the residual stream after the embedding and after every layer.
    pub hidden_states: bool,
    /// Project only the last position to logits (generation).
    pub last_only: bool,
    /// LoRA switches (adapters off for the reference; dropout while training).
    pub linear: LinearCtx,
    /// Project only these flattened positions (`b * T + t`) to logits, which then have
    /// shape `(K, V)`: training needs logits on completion tokens only.
    pub logit_rows: Option<Vec<u32>>,
    /// Stop before the LM head: `logits` then holds the final-norm hidden states of the
    /// rows that would have been projected, `(K, C)` (or `(B, T, C)`), for
    /// [`crate::ops::lm_head::lm_head_logprobs`] with [`Transformer::head_weight`].
    pub no_head: bool,
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
    /// None when the embeddings are tied, and for a sequence classifier.
    pub lm_head: Option<Linear>,
    /// A sequence classifier's `score` head `(num_labels, C)`, in place of the LM head.
    pub score: Option<Linear>,
    pub rope: Rope,
    pub device: Device,
    /// Keep only each decoder layer's input for the backward and recompute the layer
    /// there (TRL's `gradient_checkpointing`, transformers'
    /// `gradient_checkpointing_enable()`); passes that fill a KV cache ignore it.
    pub gradient_checkpointing: bool,
    /// Log-prob passes over a batch of sequences ([`crate::train::loss::sequence_logps`])
    /// lay them end to end in one row instead of padding each to the longest (TRL's
    /// `padding_free`): attention is block-diagonal causal and RoPE restarts at each
    /// sequence, so the results are the padded pass's, without its padding.
    pub padding_free: bool,
    /// With `padding_free`, sequences of a batch with the same prompt compute it once:
    /// the prompt, then each completion, every completion attending to the prompt and
    /// itself ([`crate::train::pack::pack_shared`]). Same results, fewer tokens.
    pub shared_prompt: bool,
}

/// PEFT module names of LoRA targets given as `q`, `gate`, ... or `q_proj`, `gate_proj`, ...
pub fn lora_target_names(targets: &[String]) -> Vec<String> {
    targets
        .iter()
        .map(|t| {
            if t.ends_with("_proj") {
                t.clone()
            } else {
                format!("{t}_proj")
            }
        })
        .collect()
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
        if let Some(n) = cfg.num_labels {
            out.push(("score.weight".to_string(), vec![n, c], true));
        } else if !cfg.tie_word_embeddings {
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
            Ok(Linear {
                weight,
                bias,
                lora: None,
            })
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
        let (lm_head, score) = match cfg.num_labels {
            Some(n) => (None, Some(lin(g, "score", n, c, false)?)),
            None if cfg.tie_word_embeddings => (None, None),
            None => (Some(lin(g, "lm_head", v, c, false)?), None),
        };
        Ok(Transformer {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            score,
            rope: Rope::new(cfg),
            device,
            gradient_checkpointing: false,
            padding_free: false,
            shared_prompt: false,
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
        let used = std::cell::RefCell::new(std::collections::HashSet::new());
        let net = Transformer::assemble(cfg, opts.device, |name, shape, matrix| {
            used.borrow_mut().insert(name.to_string());
            let keep = opts.keep_16bit && matrix && !opts.trainable;
            let t = ckpt.load(name, shape, opts.device, keep, &why(shape))?;
            Ok(if opts.trainable {
                t.requires_grad_()
            } else {
                t
            })
        })?;
        // a tensor the config does not account for (an extra layer, a bias the config
        // does not ask for, an lm_head beside tied embeddings) would be silently dropped,
        // changing the model: refuse it. Rotary inverse-frequency buffers that old
        // checkpoints carry are recomputed from the config, so they are fine.
        let used = used.into_inner();
        let mut unused: Vec<&String> = ckpt
            .names()
            .filter(|n| !used.contains(*n) && !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            let more = unused.len().saturating_sub(5);
            return Err(Error::invalid(
                "load",
                format!(
                    "the checkpoint holds {} tensor(s) that config.json does not use: {}{} (does num_hidden_layers, attention_bias, mlp_bias or tie_word_embeddings match the weights?)",
                    unused.len(),
                    unused.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                ),
            ));
        }
        Ok(net)
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

    /// Every parameter as a trainable f32 leaf (a random model made trainable, for benches).
    pub fn into_trainable(mut self) -> Result<Transformer> {
        let net = &mut self;
        let leaf = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_dtype(DType::F32)?.detach().requires_grad_())
        };
        net.embed_tokens = leaf(&net.embed_tokens)?;
        net.norm = leaf(&net.norm)?;
        for l in &mut net.layers {
            l.input_layernorm = leaf(&l.input_layernorm)?;
            l.post_attention_layernorm = leaf(&l.post_attention_layernorm)?;
            for lin in [
                &mut l.q_proj,
                &mut l.k_proj,
                &mut l.v_proj,
                &mut l.o_proj,
                &mut l.gate_proj,
                &mut l.up_proj,
                &mut l.down_proj,
            ] {
                lin.weight = leaf(&lin.weight)?;
                if let Some(b) = &lin.bias {
                    lin.bias = Some(leaf(b)?);
                }
            }
        }
        if let Some(h) = &mut net.lm_head {
            h.weight = leaf(&h.weight)?;
        }
        if let Some(h) = &mut net.score {
            h.weight = leaf(&h.weight)?;
        }
        Ok(self)
    }

    /// The LM head's weight `(V, C)`: `lm_head.weight`, or the embeddings when tied.
    /// The head applied to final-norm hidden states `h` (`(.., C)` -> `(.., V)`): the LM
    /// head, the tied embedding, or a sequence classifier's score head.
    pub fn project(&self, h: &Tensor, linear: &LinearCtx) -> Result<Tensor> {
        // a sequence classifier's "logits" are its scores, (.., num_labels)
        match (&self.score, &self.lm_head) {
            (Some(head), _) | (None, Some(head)) => head.forward_ctx(h, linear, 1 << 40),
            (None, None) => h.matmul(&self.embed_tokens.t()?),
        }
    }

    /// The logits of one sequence `ids`, `chunk` positions at a time: `f(first position,
    /// chunk x V values)`. The device never holds more than one chunk of logits, so a
    /// long sequence with a large vocabulary fits (`ponder logits`, `ponder compare`).
    pub fn logits_in_chunks(
        &self,
        ids: &[u32],
        chunk: usize,
        mut f: impl FnMut(usize, Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let _ng = crate::autograd::NoGradGuard::new();
        let t = ids.len();
        let out = self.forward(
            ids,
            1,
            t,
            Forward {
                no_head: true,
                ..Default::default()
            },
        )?;
        let h = out.logits.reshape(&[t, self.cfg.hidden_size])?;
        let chunk = chunk.max(1);
        for r0 in (0..t).step_by(chunk) {
            let n = chunk.min(t - r0);
            let logits = self.project(&h.narrow(0, r0, n)?, &LinearCtx::default())?;
            f(r0, logits.to_vec_f32()?)?;
        }
        Ok(())
    }

    pub fn head_weight(&self) -> Result<&Tensor> {
        if self.score.is_some() {
            return Err(Error::invalid(
                "forward",
                "a sequence classifier has a score head, not an LM head",
            ));
        }
        Ok(match &self.lm_head {
            Some(h) => &h.weight,
            None => &self.embed_tokens,
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
        if let Some(h) = &self.score {
            out.push(("score.weight".to_string(), h.weight.clone()));
        }
        out
    }

    /// The trainable tensors by name, mutable, so an optimizer can move them into its
    /// arena: [`named_parameters`](Self::named_parameters), or with `lora` the adapters
    /// of [`lora_parameters`](Self::lora_parameters), in the same order.
    pub fn trainable_mut(&mut self, lora: bool) -> Result<Vec<(String, &mut Tensor)>> {
        let names = if lora {
            self.lora_parameters()
        } else {
            self.named_parameters()
        };
        let mut ts: Vec<&mut Tensor> = Vec::new();
        if lora {
            for (_, _, lin) in self.linears_mut() {
                if let Some(l) = &mut lin.lora {
                    ts.push(&mut l.a);
                    ts.push(&mut l.b);
                }
            }
        } else {
            ts.push(&mut self.embed_tokens);
            for l in &mut self.layers {
                ts.push(&mut l.input_layernorm);
                let [q, k, v, o] = [&mut l.q_proj, &mut l.k_proj, &mut l.v_proj, &mut l.o_proj];
                for lin in [q, k, v, o] {
                    ts.push(&mut lin.weight);
                    ts.extend(lin.bias.as_mut());
                }
                ts.push(&mut l.post_attention_layernorm);
                for lin in [&mut l.gate_proj, &mut l.up_proj, &mut l.down_proj] {
                    ts.push(&mut lin.weight);
                    ts.extend(lin.bias.as_mut());
                }
            }
            ts.push(&mut self.norm);
            for h in [&mut self.lm_head, &mut self.score].into_iter().flatten() {
                ts.push(&mut h.weight);
            }
        }
        if ts.len() != names.len() || names.iter().zip(&ts).any(|((_, a), b)| a.id() != b.id()) {
            return Err(Error::invalid(
                "trainable_mut",
                "internal: the tensors do not follow named_parameters' order",
            ));
        }
        Ok(names.into_iter().map(|(n, _)| n).zip(ts).collect())
    }

    /// The linears LoRA can target, by PEFT module name (q_proj, ..., down_proj) per layer.
    fn linears_mut(&mut self) -> Vec<(usize, &'static str, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.push((i, "self_attn.q_proj", &mut l.q_proj));
            out.push((i, "self_attn.k_proj", &mut l.k_proj));
            out.push((i, "self_attn.v_proj", &mut l.v_proj));
            out.push((i, "self_attn.o_proj", &mut l.o_proj));
            out.push((i, "mlp.gate_proj", &mut l.gate_proj));
            out.push((i, "mlp.up_proj", &mut l.up_proj));
            out.push((i, "mlp.down_proj", &mut l.down_proj));
        }
        out
    }

    /// Attach fresh LoRA adapters (A ~ U(-1/sqrt(in), 1/sqrt(in)) as PEFT's kaiming init,
    /// B = 0) to the targeted projections (`q`, `k`, `v`, `o`, `gate`, `up`, `down`, or
    /// their `*_proj` names). The base weights are left frozen.
    pub fn add_lora(
        &mut self,
        targets: &[String],
        r: usize,
        alpha: f64,
        dropout: f32,
        seed: u64,
    ) -> Result<()> {
        let want = lora_target_names(targets);
        const KNOWN: [&str; 7] = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        if let Some(bad) = want.iter().find(|t| !KNOWN.contains(&t.as_str())) {
            return Err(Error::invalid(
                "lora",
                format!("unknown target '{bad}' (expected some of q, k, v, o, gate, up, down)"),
            ));
        }
        if r == 0 {
            return Err(Error::invalid("lora", "lora rank must be at least 1"));
        }
        let device = self.device;
        let mut k = seed;
        for (_, name, lin) in self.linears_mut() {
            let short = name.rsplit('.').next().unwrap();
            if !want.iter().any(|t| t == short) {
                continue;
            }
            let (out_f, in_f) = (lin.weight.shape()[0], lin.weight.shape()[1]);
            k += 1;
            let bound = 1.0 / (in_f as f32).sqrt();
            let a = Tensor::rand_uniform(&[r, in_f], -bound, bound, k, device)?.requires_grad_();
            let b = Tensor::zeros(&[out_f, r], device)?.requires_grad_();
            lin.lora = Some(Lora {
                a,
                b,
                scale: alpha / r as f64,
                dropout,
            });
        }
        Ok(())
    }

    /// LoRA tensors by their PEFT names (`base_model.model.<module>.lora_A.weight`).
    pub fn lora_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, lin) in [
                ("self_attn.q_proj", &l.q_proj),
                ("self_attn.k_proj", &l.k_proj),
                ("self_attn.v_proj", &l.v_proj),
                ("self_attn.o_proj", &l.o_proj),
                ("mlp.gate_proj", &l.gate_proj),
                ("mlp.up_proj", &l.up_proj),
                ("mlp.down_proj", &l.down_proj),
            ] {
                if let Some(lo) = &lin.lora {
                    let p = format!("base_model.model.model.layers.{i}.{name}");
                    out.push((format!("{p}.lora_A.weight"), lo.a.clone()));
                    out.push((format!("{p}.lora_B.weight"), lo.b.clone()));
                }
            }
        }
        out
    }

    /// Fold every adapter into its base weight (W += scale * B A, in f32) and drop it.
    pub fn merge_lora(&mut self) -> Result<()> {
        let _ng = crate::autograd::NoGradGuard::new();
        for (_, _, lin) in self.linears_mut() {
            if let Some(l) = lin.lora.take() {
                let delta = l.b.detach().matmul(&l.a.detach())?.scale(l.scale)?;
                lin.weight = lin.weight.detach().to_dtype(DType::F32)?.add(&delta)?;
            }
        }
        Ok(())
    }

    /// Forward a fixed probe sequence and refuse a model whose logits are not finite: a
    /// diverged model's weights can each be finite and yet overflow in the forward.
    pub fn check_probe_logits(&self) -> Result<()> {
        let v = self.cfg.vocab_size as u64;
        let ids: Vec<u32> = (0..8u64.min(v))
            .map(|i| ((i * 7919 + 1) % v) as u32)
            .collect();
        let t = ids.len();
        let logits = crate::autograd::no_grad(|| {
            self.forward(&ids, 1, t, Forward::default())?
                .logits
                .to_vec_f64()
        })?;
        let bad = logits.iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            return Err(Error::invalid(
                "model",
                format!(
                    "{bad} of the {} logits of a probe sequence are NaN or infinite: the weights are finite but overflow in the forward; training diverged (try a lower --lr)",
                    logits.len()
                ),
            ));
        }
        Ok(())
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
        let mut linear = fwd.linear.clone();
        if linear.dropout_seed.is_some() && linear.token_keys.is_none() {
            linear.token_keys = Some(super::layer::token_keys(&positions));
        }
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
            kv_shared: fwd.kv_shared.clone(),
        };
        let mut h = self.embed_tokens.embedding(&ids_t)?; // (B, T, C)
        let mut hidden = Vec::new();
        if fwd.hidden_states {
            hidden.push(h.clone());
        }
        let ctx = LayerCtx {
            b,
            t,
            nh,
            nkv,
            hd,
            eps,
            cos,
            sin,
            attn,
            linear,
        };
        // checkpointing applies to training passes (no cache to fill)
        let checkpointed = self.gradient_checkpointing && fwd.cache.is_none();
        let ctx = std::sync::Arc::new(ctx);
        for (i, layer) in self.layers.iter().enumerate() {
            h = if checkpointed {
                let (layer_c, ctx_c) = (layer.clone(), ctx.clone());
                crate::autograd::checkpoint(&h, &layer.tensors(), move |h| {
                    layer_c.forward(i, h, &ctx_c, None)
                })?
            } else {
                let cache = fwd.cache.as_deref_mut().map(|c| (c, offset));
                layer.forward(i, &h, &ctx, cache)?
            };
            if fwd.hidden_states {
                hidden.push(h.clone());
            }
        }
        if let Some(c) = fwd.cache {
            c.len = offset + t;
        }
        let hn = h.rms_norm(&self.norm, eps)?;
        let hl = match (&fwd.logit_rows, fwd.last_only) {
            (Some(rows), _) => {
                if let Some(&bad) = rows.iter().find(|&&r| r as usize >= b * t) {
                    return Err(Error::invalid(
                        "forward",
                        format!("logit row {bad} is outside the ({b}, {t}) batch"),
                    ));
                }
                // gather rows (an embedding lookup into the hidden states; its backward scatters)
                let rows = Tensor::from_u32(rows.clone(), &[rows.len()], self.device)?;
                hn.reshape(&[b * t, cfg.hidden_size])?.embedding(&rows)?
            }
            (None, true) => hn.narrow(1, t - 1, 1)?,
            (None, false) => hn.clone(),
        };
        if fwd.no_head {
            return Ok(Output {
                logits: hl,
                hidden,
                final_norm: fwd.hidden_states.then_some(hn),
            });
        }
        let logits = self.project(&hl, &fwd.linear)?;
        Ok(Output {
            logits,
            hidden,
            final_norm: fwd.hidden_states.then_some(hn),
        })
    }
}
