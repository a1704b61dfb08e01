//! Every training option, as flags (`ponder sft|dpo`) or as a TOML file of the same names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::TruncationMode;
use super::loss::LossType;
use super::optim::Scheduler;
use crate::dtype::DType;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Sft,
    Dpo,
}

/// Every training option. Field names are the flag names (`--max-grad-norm` =
/// `max_grad_norm`), in the CLI and in a `--config` TOML file alike.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Model directory (Hugging Face layout) to start from.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL training data (TRL formats).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: the trained model or adapter, checkpoints, metrics, plot.
    #[arg(long)]
    pub out: PathBuf,
    /// Reference model for DPO (default: the starting policy).
    #[arg(long)]
    pub ref_model: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub loss_type: LossType,
    /// Label smoothing of the sigmoid and robust losses.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Add rpo_alpha times the NLL of the chosen completions (RPO).
    #[arg(long)]
    pub rpo_alpha: Option<f64>,
    /// Average log-probs over completion tokens instead of summing them.
    #[arg(long)]
    pub length_normalize: bool,
    /// Peak learning rate (default: 1e-6 for dpo, 2e-5 for sft).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Passes over the data (default 1; fractional allowed).
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<f64>,
    /// Optimizer steps (overrides epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Examples (sft) or pairs (dpo) per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, value_enum, default_value = "linear")]
    pub lr_scheduler: Scheduler,
    #[arg(long, conflicts_with = "warmup_ratio")]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Floor of cosine_with_min_lr (default 0.1 x lr).
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Bound on prompt + completion tokens.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Keep the last this-many prompt tokens.
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    #[arg(long, value_enum, default_value = "keep-start")]
    pub truncation_mode: TruncationMode,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Shuffle the data each epoch (seeded); off by default, so batches keep file order.
    #[arg(long)]
    pub shuffle: bool,
    /// Metrics JSONL (default OUT/metrics.jsonl).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Write a checkpoint every N optimizer steps (0: only the final model).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Continue from a checkpoint (a checkpoint-N directory, or an output directory,
    /// whose latest checkpoint is used).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// LoRA rank (enables LoRA; the base stays frozen, possibly 16-bit).
    #[arg(long)]
    pub lora_r: Option<usize>,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f32,
    /// Comma-separated projections: q,k,v,o,gate,up,down.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o")]
    pub lora_targets: Vec<String>,
    /// Save the base with the adapters merged in, instead of a PEFT adapter.
    #[arg(long)]
    pub merge_lora: bool,
    /// Keep only each decoder layer's input for the backward and recompute the layer
    /// there: activation memory falls from every layer's to about one layer's, for
    /// about a third more compute (TRL's gradient_checkpointing).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Lay the sequences of each micro-batch end to end in one row instead of padding
    /// each to the longest (TRL's padding_free; `--packing`, SFT's name, is the same
    /// switch): attention stays inside each sequence and RoPE restarts at each, so the
    /// losses are the padded run's, without the padding's compute and memory.
    #[arg(long, visible_alias = "packing")]
    pub padding_free: bool,
    /// Turn on --padding-free and compute each prompt once per micro-batch: the answers
    /// that share it (a pair's chosen and rejected, or several samples of one question)
    /// follow it in the row, each attending to the prompt and itself. Same losses, fewer
    /// tokens. With LoRA dropout, a shared prompt's tokens draw one mask for all its
    /// answers.
    #[arg(long)]
    pub shared_prompt: bool,
    /// Form micro-batches by tokens instead of rows: each optimizer step's examples
    /// (batch-size x grad-accum of them, so the loss is normalised as TRL normalises it)
    /// go into micro-batches of at most this many tokens, padding included unless
    /// --padding-free; a longer example is a micro-batch of its own.
    #[arg(long)]
    pub max_tokens_per_batch: Option<usize>,
    /// Compute the reference on the fly instead of caching its log-probs.
    #[arg(long)]
    pub no_ref_cache: bool,
    /// Reference cache file (default: $PONDER_CACHE_DIR or DATA_DIR/.ponder-cache, named by key).
    #[arg(long)]
    pub ref_cache: Option<PathBuf>,
    /// cpu, gpu or auto (default $PONDER_DEVICE, else auto).
    #[arg(long)]
    pub device: Option<String>,
    /// Dtype of the saved weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub save_dtype: SaveDType,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Column names of data whose fields are not named as ponder's.
    #[command(flatten)]
    pub fields: super::data::FieldArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDType {
    F32,
    F16,
    Bf16,
}

/// Sequence bound when `--max-length` is not given (TRL's default).
pub const DEFAULT_MAX_LENGTH: usize = 1024;

fn range_err(flag: &str, v: impl std::fmt::Display, accepted: &str) -> Error {
    Error::invalid(
        "train",
        format!("--{flag} {v} is out of range: accepted {accepted}"),
    )
}

impl TrainArgs {
    /// Range and finiteness of every numeric flag, so that nothing trains on NaN, divides
    /// by zero or allocates without bound. The error names the flag and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let finite_pos = |flag: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(range_err(flag, v, "a finite number > 0"))
            }
        };
        let finite_nonneg = |flag: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(range_err(flag, v, "a finite number >= 0"))
            }
        };
        let count = |flag: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(range_err(flag, v, &format!("1..={max}")))
            }
        };
        if let Some(lr) = self.lr {
            let max = super::fit::MAX_LR;
            if !(lr.is_finite() && lr > 0.0 && lr <= max) {
                return Err(range_err("lr", lr, &format!("0 < x <= {max}")));
            }
        }
        finite_pos("beta", self.beta)?;
        if !(self.label_smoothing.is_finite() && (0.0..0.5).contains(&self.label_smoothing)) {
            return Err(range_err(
                "label-smoothing",
                self.label_smoothing,
                "0 <= x < 0.5",
            ));
        }
        if let Some(a) = self.rpo_alpha {
            finite_nonneg("rpo-alpha", a)?;
        }
        if let Some(e) = self.epochs {
            if !(e.is_finite() && e > 0.0 && e <= 1e6) {
                return Err(range_err("epochs", e, "0 < x <= 1e6"));
            }
        }
        if let Some(st) = self.steps {
            count("steps", st, 1 << 32)?;
        }
        count("batch-size", self.batch_size, 1 << 16)?;
        count("grad-accum", self.grad_accum, 1 << 16)?;
        if let Some(r) = self.warmup_ratio {
            if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
                return Err(range_err("warmup-ratio", r, "0 <= x <= 1"));
            }
        }
        if let Some(w) = self.min_lr {
            finite_nonneg("min-lr", w)?;
            let top = self
                .lr
                .unwrap_or(super::fit::MAX_LR)
                .min(super::fit::MAX_LR);
            if w > top {
                return Err(range_err("min-lr", w, &format!("0 <= x <= --lr ({top})")));
            }
        }
        finite_nonneg("weight-decay", self.weight_decay)?;
        finite_nonneg("max-grad-norm", self.max_grad_norm)?;
        if let Some(l) = self.max_length {
            count("max-length", l, 1 << 20)?;
        }
        if let Some(l) = self.max_prompt_length {
            count("max-prompt-length", l, 1 << 20)?;
        }
        if let Some(n) = self.max_tokens_per_batch {
            count("max-tokens-per-batch", n, 1 << 24)?;
        }
        if let Some(r) = self.lora_r {
            count("lora-r", r, 1 << 12)?;
        }
        finite_pos("lora-alpha", self.lora_alpha)?;
        let d = self.lora_dropout as f64;
        if !(d.is_finite() && (0.0..1.0).contains(&d)) {
            return Err(range_err("lora-dropout", d, "0 <= p < 1"));
        }
        Ok(())
    }

    /// Parse the same flags `ponder sft|dpo` takes (clap holds the one set of defaults).
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<TrainArgs> {
        use clap::{Args, FromArgMatches};
        let cmd = TrainArgs::augment_args(clap::Command::new("train").no_binary_name(true));
        let m = cmd
            .try_get_matches_from(flags.iter().map(|f| f.as_ref()))
            .map_err(|e| Error::invalid("train", e.to_string()))?;
        TrainArgs::from_arg_matches(&m).map_err(|e| Error::invalid("train", e.to_string()))
    }
}

impl SaveDType {
    pub fn dtype(self) -> DType {
        match self {
            SaveDType::F32 => DType::F32,
            SaveDType::F16 => DType::F16,
            SaveDType::Bf16 => DType::BF16,
        }
    }
}

/// Expand `--config FILE.toml` into flags placed before the command line's own (so flags
/// given on the command line win).
pub fn config_to_args(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| Error::file(path, format!("not valid TOML: {e}")))?;
    let mut out = Vec::new();
    for (k, v) in table {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.push(format!("{flag}={s}")),
            toml::Value::Integer(i) => out.push(format!("{flag}={i}")),
            toml::Value::Float(f) => out.push(format!("{flag}={f}")),
            toml::Value::Array(a) => {
                let items: Vec<String> = a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect();
                out.push(format!("{flag}={}", items.join(",")));
            }
            other => {
                return Err(Error::file(
                    path,
                    format!("key `{k}`: unsupported value {other}"),
                ))
            }
        }
    }
    Ok(out)
}
