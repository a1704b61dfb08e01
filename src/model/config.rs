//! `config.json` of a Llama- or Qwen2-family checkpoint. Both spellings found in the wild
//! are accepted: transformers 4.x (top-level `rope_theta`, `rope_scaling`, `torch_dtype`)
//! and 5.x (`rope_parameters`, `dtype`). Field names follow config.json.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Largest size any single config dimension may have (sizes, heads, layers, vocabulary).
const MAX_DIM: usize = 1 << 24;

/// The decoder families ponder runs (one decoder, switched by config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

/// `rope_scaling` / `rope_parameters.rope_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies scaled by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// Llama 3.1's `(factor, low_freq_factor, high_freq_factor,
    /// original_max_position_embeddings)`, when this is that scaling.
    pub fn llama3(&self) -> Option<(f64, f64, f64, f64)> {
        match *self {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => Some((
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            )),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (always for Qwen2; `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama's `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    pub max_position_embeddings: usize,
    /// `torch_dtype` (4.x) or `dtype` (5.x), e.g. "bfloat16".
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `pad_token_id`: a sequence classifier reads its score at the last token that is not
    /// this one.
    pub pad_token_id: Option<u32>,
    /// `Some(num_labels)` for a `...ForSequenceClassification` checkpoint (a `score` head
    /// instead of the LM head), `None` for a causal LM.
    pub num_labels: Option<usize>,
    /// The file as read, written back (with edits) when saving.
    pub raw: Value,
}

struct Fields<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: &str) -> Error {
        Error::file(self.path, format!("field `{field}`: {msg}"))
    }
    fn opt(&self, field: &str) -> Option<&Value> {
        self.v.get(field).filter(|v| !v.is_null())
    }
    fn usize(&self, field: &str) -> Result<usize> {
        match self.opt(field) {
            None => Err(self.err(field, "missing (expected a positive integer)")),
            Some(v) => self.as_usize(field, v),
        }
    }
    fn as_usize(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| self.err(field, &format!("expected a positive integer, got {v}")))
    }
    fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        match self.opt(field) {
            None => Ok(default),
            Some(v) => self.as_usize(field, v),
        }
    }
    fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        match self.opt(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, &format!("expected a number, got {v}"))),
        }
    }
    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.opt(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, &format!("expected true or false, got {v}"))),
        }
    }
    /// An id or a list of ids (eos_token_id may be either).
    fn ids(&self, field: &str) -> Result<Vec<u32>> {
        match self.opt(field) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.err(field, "expected token ids"))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|n| vec![n as u32])
                .ok_or_else(|| self.err(field, &format!("expected a token id or a list, got {v}"))),
        }
    }
}

impl Config {
    /// The config of a model directory (its config.json) or of a GGUF file (its metadata).
    pub fn load(dir: &Path) -> Result<Config> {
        if super::gguf::is_gguf(dir) {
            return super::gguf::GgufFile::open(dir)?.config();
        }
        let path = dir.join("config.json");
        let text = crate::files::read_regular_to_string(&path)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("not valid JSON: {e}")))?;
        Config::from_json(&path, v)
    }

    pub fn from_json(path: &Path, v: Value) -> Result<Config> {
        let f = Fields { path, v: &v };
        if !v.is_object() {
            return Err(Error::file(path, "expected a JSON object"));
        }
        let arch_name = match f.opt("architectures") {
            Some(Value::Array(a)) if !a.is_empty() => a[0].as_str().unwrap_or("").to_string(),
            _ => f
                .opt("model_type")
                .and_then(|m| m.as_str())
                .map(|m| m.to_string())
                .unwrap_or_default(),
        };
        let (arch, classifier) = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => (Arch::Llama, false),
            "Qwen2ForCausalLM" | "qwen2" => (Arch::Qwen2, false),
            "LlamaForSequenceClassification" => (Arch::Llama, true),
            "Qwen2ForSequenceClassification" => (Arch::Qwen2, true),
            "" => return Err(f.err("architectures", "missing (expected LlamaForCausalLM or Qwen2ForCausalLM)")),
            other => return Err(f.err("architectures", &format!("unsupported architecture '{other}' (supported: LlamaForCausalLM, Qwen2ForCausalLM, and their ...ForSequenceClassification reward models)"))),
        };
        // transformers writes id2label; num_labels itself only sometimes; its default is 2
        let num_labels = if classifier {
            let n = match (f.opt("num_labels"), f.opt("id2label")) {
                (Some(_), _) => f.usize("num_labels")?,
                (None, Some(Value::Object(m))) => m.len(),
                _ => 2,
            };
            if !(1..=MAX_DIM).contains(&n) {
                return Err(f.err("num_labels", &format!("{n} is out of range 1..={MAX_DIM}")));
            }
            Some(n)
        } else {
            None
        };
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f.usize_or("num_key_value_heads", num_attention_heads)?;
        for (name, v) in [
            ("hidden_size", hidden_size),
            ("num_attention_heads", num_attention_heads),
            ("num_key_value_heads", num_key_value_heads),
        ] {
            if !(1..=MAX_DIM).contains(&v) {
                return Err(f.err(name, &format!("{v} is out of range 1..={MAX_DIM}")));
            }
        }
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err("num_key_value_heads", &format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}")));
        }
        let head_dim = match f.opt("head_dim") {
            Some(h) => f.as_usize("head_dim", h)?,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(f.err(
                    "head_dim",
                    "missing, and hidden_size is not a multiple of num_attention_heads",
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.err(
                "head_dim",
                &format!("{head_dim} is odd; rotary embedding needs an even head dim"),
            ));
        }
        if let Some(act) = f.opt("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(f.err(
                    "hidden_act",
                    &format!("unsupported activation {act} (ponder's decoder uses silu)"),
                ));
            }
        }
        if f.bool_or("use_sliding_window", false)? {
            return Err(f.err(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let (rope_theta, rope_scaling) = parse_rope(&f)?;
        let attention_bias = f.bool_or("attention_bias", false)?;
        let dtype = f
            .opt("torch_dtype")
            .or(f.opt("dtype"))
            .and_then(|d| d.as_str())
            .map(|s| s.to_string());
        let cfg = Config {
            arch,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            rope_scaling,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            mlp_bias: arch == Arch::Llama && f.bool_or("mlp_bias", false)?,
            max_position_embeddings: f.usize_or("max_position_embeddings", 4096)?,
            dtype,
            bos_token_id: f.ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.ids("eos_token_id")?,
            pad_token_id: f.ids("pad_token_id")?.first().copied(),
            num_labels,
            raw: v.clone(),
        };
        cfg.check_ranges(&f)?;
        Ok(cfg)
    }

    /// Sizes and constants that would overflow, divide by zero or give NaN logits: every
    /// size in 1..=MAX_DIM, their products (weight shapes) within 2^40 elements, positive
    /// finite norm epsilon, rope theta and rope factors.
    fn check_ranges(&self, f: &Fields) -> Result<()> {
        for (name, v) in [
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if !(1..=MAX_DIM).contains(&v) {
                return Err(f.err(name, &format!("{v} is out of range 1..={MAX_DIM}")));
            }
        }
        let elems = |a: usize, b: usize| a.checked_mul(b).filter(|&n| n <= 1 << 40);
        for (name, a, b) in [
            (
                "num_attention_heads x head_dim",
                self.num_attention_heads,
                self.head_dim,
            ),
            (
                "vocab_size x hidden_size",
                self.vocab_size,
                self.hidden_size,
            ),
            (
                "intermediate_size x hidden_size",
                self.intermediate_size,
                self.hidden_size,
            ),
        ] {
            let Some(n) = elems(a, b) else {
                return Err(f.err(
                    name,
                    &format!("{a} x {b} overflows (more than 2^40 elements)"),
                ));
            };
            if elems(n, self.num_hidden_layers.max(1)).is_none() {
                return Err(f.err(
                    name,
                    "times num_hidden_layers overflows (more than 2^40 elements)",
                ));
            }
        }
        let positive = |name: &str, x: f64| -> Result<()> {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(f.err(name, &format!("{x} must be a finite number > 0")))
            }
        };
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("rope_theta", self.rope_theta)?;
        match &self.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", *factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                positive(
                    "rope_scaling.original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                if high_freq_factor <= low_freq_factor {
                    return Err(f.err(
                        "rope_scaling.high_freq_factor",
                        "must be larger than low_freq_factor",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Query width NH * HD (may differ from hidden_size when head_dim is given).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

/// rope theta and scaling from either spelling.
fn parse_rope(f: &Fields) -> Result<(f64, RopeScaling)> {
    // 5.x: rope_parameters {rope_type, rope_theta, ...}; 4.x: rope_theta + rope_scaling.
    let (field, params) = match f.opt("rope_parameters") {
        Some(p) => ("rope_parameters", Some(p)),
        None => ("rope_scaling", f.opt("rope_scaling")),
    };
    let theta = match params
        .and_then(|p| p.get("rope_theta"))
        .and_then(|t| t.as_f64())
    {
        Some(t) => t,
        None => f.f64_or("rope_theta", 10000.0)?,
    };
    let Some(p) = params else {
        return Ok((theta, RopeScaling::Default));
    };
    if !p.is_object() {
        return Err(f.err(field, &format!("expected an object, got {p}")));
    }
    let kind = p
        .get("rope_type")
        .or(p.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        p.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| f.err(field, &format!("rope type '{kind}' needs a number `{k}`")))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(f.err(
                field,
                &format!("unsupported rope type '{other}' (supported: default, linear, llama3)"),
            ))
        }
    };
    Ok((theta, scaling))
}
