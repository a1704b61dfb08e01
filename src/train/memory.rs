//! A memory estimate made before training allocates, so that a run too big for the
//! machine stops at once with a message saying what to change, instead of being killed by
//! the kernel part-way through (or after an hour of reference-cache building).
//!
//! The count, in f32 bytes, for a decoder of width C, MLP width F, L layers, NH query
//! heads and vocabulary V, trained on micro-batches of R = rows x T positions:
//!
//! - weights: every parameter (16-bit where kept so for LoRA), plus for each trainable
//!   one its gradient and AdamW's two moments: 4 + 4 + 8 bytes;
//! - saved activations, per layer: about 10 C + 3 F values per position (norm inputs and
//!   outputs, q/k/v, the attention output, the residuals, gate, up and their product) and
//!   NH log-sum-exps (attention is flash-style: no T x T matrix is kept). With gradient
//!   checkpointing a layer keeps only its input, C values, and one layer's worth of the
//!   rest exists at a time, while the backward recomputes it;
//! - the LM head, which runs in chunks of rows (`ops::lm_head`): one chunk's logits and
//!   their gradient, plus all V logits of every position when they fit the budget under
//!   which the forward keeps them for the backward.
//!
//! It is an estimate (allocator slack and transient buffers are not counted), so the
//! refusal only fires when the estimate alone is over what is available.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::Transformer;

/// What one training run needs, in bytes, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    pub weights: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub logits: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer + self.activations + self.logits
    }
}

/// Parameters of the decoder `cfg` describes, counted from the config alone: the
/// tensors [`Transformer::expected`] lists for it.
pub fn parameter_count(cfg: &Config) -> u64 {
    Transformer::expected(cfg)
        .iter()
        .map(|(_, shape, _)| shape.iter().map(|&d| d as u64).product::<u64>())
        .sum()
}

/// The estimate for training `cfg` with `trainable` trainable parameters (all of them, or
/// the LoRA adapters), on micro-batches of `rows` sequences of at most `t` tokens, with
/// or without gradient checkpointing (`ckpt`).
pub fn estimate(
    cfg: &Config,
    trainable: u64,
    lora: bool,
    rows: u64,
    t: u64,
    ckpt: bool,
) -> Estimate {
    let params = parameter_count(cfg);
    let weight_bytes = if lora { 2 } else { 4 };
    let positions = rows.saturating_mul(t);
    let (c, f, nh, l, v) = (
        cfg.hidden_size as u64,
        cfg.intermediate_size as u64,
        cfg.num_attention_heads as u64,
        cfg.num_hidden_layers as u64,
        cfg.vocab_size as u64,
    );
    let layer = 10 * c + 3 * f + nh;
    let per_position = if ckpt {
        // every layer's input, plus one layer recomputed (and its gradients) at a time
        l.saturating_mul(c) + 2 * layer
    } else {
        l.saturating_mul(layer)
    };
    Estimate {
        weights: params.saturating_mul(weight_bytes) + if lora { trainable * 4 } else { 0 },
        optimizer: trainable.saturating_mul(12),
        activations: positions.saturating_mul(per_position).saturating_mul(4),
        logits: {
            use crate::ops::lm_head::{keep_bytes, CHUNK_BYTES};
            let all = positions.saturating_mul(v).saturating_mul(4);
            let chunk = all.min(CHUNK_BYTES as u64);
            if all <= keep_bytes(crate::tensor::Device::Cpu) as u64 {
                all + chunk
            } else {
                2 * chunk
            }
        },
    }
}

pub use crate::util::{available, gib};

/// [`check`] for a training run of `cfg` (see [`estimate`]); a run that fits only with
/// gradient checkpointing is refused with a message that says so.
#[allow(clippy::too_many_arguments)]
pub fn check_training(
    what: &'static str,
    cfg: &Config,
    trainable: u64,
    lora: bool,
    rows: u64,
    t: u64,
    ckpt: bool,
    available: Option<u64>,
) -> Result<()> {
    let e = estimate(cfg, trainable, lora, rows, t, ckpt);
    match check(what, &e, rows, t, available) {
        Err(Error::Invalid { op, msg }) if !ckpt && rows > 0 => {
            let with = estimate(cfg, trainable, lora, rows, t, true);
            if check(what, &with, rows, t, available).is_ok() {
                return Err(Error::Invalid {
                    op,
                    msg: format!(
                        "{msg}; with --gradient-checkpointing it needs about {} and fits",
                        gib(with.total())
                    ),
                });
            }
            Err(Error::Invalid { op, msg })
        }
        r => r,
    }
}

/// Refuse a run whose estimate is over `available` bytes, naming the parts and the flags
/// that shrink them. `what` names the run for the message.
pub fn check(
    what: &'static str,
    e: &Estimate,
    rows: u64,
    t: u64,
    available: Option<u64>,
) -> Result<()> {
    let Some(avail) = available else {
        return Ok(());
    };
    if e.total() <= avail {
        return Ok(());
    }
    if rows == 0 {
        return Err(Error::invalid(
            what,
            format!(
                "the weights ({}) with their gradients and AdamW moments ({}) need about {}, \
                 but only {} is available; train LoRA adapters (--lora-r) or use a machine \
                 with more memory",
                gib(e.weights),
                gib(e.optimizer),
                gib(e.total()),
                gib(avail)
            ),
        ));
    }
    Err(Error::invalid(
        what,
        format!(
            "this run needs about {} (weights {}, gradients and AdamW moments {}, \
             activations {} and logits {} for a micro-batch of {rows} x {t} tokens), but \
             only {} is available; lower --batch-size (raise --grad-accum to keep the \
             effective batch), lower --max-length, or train LoRA adapters (--lora-r)",
            gib(e.total()),
            gib(e.weights),
            gib(e.optimizer),
            gib(e.activations),
            gib(e.logits),
            gib(avail),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen05() -> Config {
        // Qwen2.5-0.5B's shape
        let raw = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
            "max_position_embeddings": 32768
        });
        Config::from_json(std::path::Path::new("config.json"), raw).unwrap()
    }

    #[test]
    fn parameter_count_matches_the_published_size() {
        // Qwen2.5-0.5B: 494,032,768 parameters (the model card's 0.49B)
        assert_eq!(parameter_count(&qwen05()), 494_032_768);
    }

    #[test]
    fn a_run_over_the_available_memory_is_refused_naming_the_flags() {
        let cfg = qwen05();
        let p = parameter_count(&cfg);
        let small = estimate(&cfg, p, false, 8, 512, false);
        // weights 2 GB, optimizer 6 GB, activations 8 x 512 x 24 x (10 C + 3 F + NH) x 4
        // = 9.3 GB, logits two chunks of 64 MiB
        assert!(
            small.total() > 10 << 30 && small.total() < 24 << 30,
            "{small:?}"
        );
        assert!(check("dpo", &small, 8, 512, Some(64 << 30)).is_ok());
        let err = check("dpo", &small, 8, 512, Some(8 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--batch-size") && err.contains("8 x 512"),
            "{err}"
        );
        assert!(check("dpo", &small, 8, 512, None).is_ok());
    }

    #[test]
    fn checkpointing_shrinks_the_activations_and_a_run_that_needs_it_says_so() {
        let cfg = qwen05();
        let p = parameter_count(&cfg);
        let (plain, ckpt) = (
            estimate(&cfg, p, false, 8, 512, false),
            estimate(&cfg, p, false, 8, 512, true),
        );
        // 24 layers of (10 C + 3 F + NH) values per position against 24 C + 2 layers'
        assert!(
            ckpt.activations * 5 < plain.activations,
            "{plain:?} {ckpt:?}"
        );
        assert_eq!((ckpt.weights, ckpt.logits), (plain.weights, plain.logits));
        // 12 GiB: too little without checkpointing, enough with it
        let avail = Some(12 << 30);
        let err = check_training("dpo", &cfg, p, false, 8, 512, false, avail)
            .unwrap_err()
            .to_string();
        assert!(err.contains("with --gradient-checkpointing"), "{err}");
        assert!(check_training("dpo", &cfg, p, false, 8, 512, true, avail).is_ok());
        // and no hint where checkpointing would not help enough
        let err = check_training("dpo", &cfg, p, false, 8, 512, false, Some(4 << 30))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("gradient-checkpointing"), "{err}");
    }
}
