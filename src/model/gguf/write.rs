//! A model and its tokenizer written as one GGUF file that llama.cpp loads: llama.cpp's
//! tensor names and metadata keys, Llama's q/k rows interleaved, the tokenizer and chat
//! template embedded.

use std::path::Path;

use serde_json::json;

use super::format::{self, OutTensor, Value};
use super::quant::{self, GgmlType};
use super::{names, GgufArch};
use crate::error::{Error, Result};
use crate::model::config::{Arch, RopeScaling};
use crate::model::transformer::Transformer;
use crate::model::Tok;

/// How the weight matrices are stored (vectors such as norms always stay f32, as
/// llama.cpp's converter keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl WeightType {
    /// llama.cpp's `general.file_type` for a file of mostly this type.
    fn file_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q8_0 => 7,
            WeightType::BF16 => 32,
        }
    }
}

fn encode(x: &[f32], dims: &[u64], wt: WeightType) -> (GgmlType, Vec<u8>) {
    let matrix = dims.len() >= 2;
    match (wt, matrix) {
        (_, false) | (WeightType::F32, _) => (GgmlType::F32, bytemuck::cast_slice(x).to_vec()),
        (WeightType::F16, _) => (
            GgmlType::F16,
            half_bytes(x, |v| half::f16::from_f32(v).to_bits()),
        ),
        (WeightType::BF16, _) => (
            GgmlType::BF16,
            half_bytes(x, |v| half::bf16::from_f32(v).to_bits()),
        ),
        // rows that are not whole Q8_0 blocks stay f16, as llama.cpp's converter does
        (WeightType::Q8_0, _) if !dims[0].is_multiple_of(32) => encode(x, dims, WeightType::F16),
        (WeightType::Q8_0, _) => (GgmlType::Q8_0, quant::quantize_q8_0(x)),
    }
}

fn half_bytes(x: &[f32], f: impl Fn(f32) -> u16) -> Vec<u8> {
    x.iter().flat_map(|&v| f(v).to_le_bytes()).collect()
}

/// The model's config as `{arch}.*` metadata.
fn model_meta(net: &Transformer, wt: WeightType) -> Result<(GgufArch, Vec<(String, Value)>)> {
    let c = &net.cfg;
    let arch = match c.arch {
        Arch::Llama => GgufArch::Llama,
        Arch::Qwen2 => GgufArch::Qwen2,
    };
    let a = arch.name();
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture".to_string(), Value::Str(a.into())),
        ("general.type".to_string(), Value::Str("model".into())),
        ("general.file_type".to_string(), Value::U32(wt.file_type())),
        ("general.quantization_version".to_string(), Value::U32(2)),
        (format!("{a}.block_count"), u(c.num_hidden_layers)),
        (format!("{a}.context_length"), u(c.max_position_embeddings)),
        (format!("{a}.embedding_length"), u(c.hidden_size)),
        (format!("{a}.feed_forward_length"), u(c.intermediate_size)),
        (
            format!("{a}.attention.head_count"),
            u(c.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u(c.num_key_value_heads),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(c.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
    ];
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        m.push((format!("{a}.attention.key_length"), u(c.head_dim)));
        m.push((format!("{a}.attention.value_length"), u(c.head_dim)));
    }
    if arch == GgufArch::Llama {
        m.push((format!("{a}.vocab_size"), u(c.vocab_size)));
        m.push((format!("{a}.rope.dimension_count"), u(c.head_dim)));
    }
    match &c.rope_scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            m.push((
                format!("{a}.rope.scaling.type"),
                Value::Str("linear".into()),
            ));
            m.push((
                format!("{a}.rope.scaling.factor"),
                Value::F32(*factor as f32),
            ));
        }
        RopeScaling::Llama3 { .. } => {
            // llama.cpp reads the factors from the rope_freqs tensor (see `rope_freqs`);
            // the parameters themselves go along under ponder's own key, so that reading
            // the file back gives the very config
            let (factor, low, high, old) = c.rope_scaling.llama3().expect("llama3 scaling");
            let p = json!({
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": old,
            });
            m.push((super::LLAMA3_KEY.into(), Value::Str(p.to_string())));
        }
    }
    Ok((arch, m))
}

/// The bytes of a GGUF file holding `net` (weights of type `wt`) and `tok`.
pub fn gguf_bytes(net: &Transformer, tok: Option<&Tok>, wt: WeightType) -> Result<Vec<u8>> {
    let (arch, mut meta) = model_meta(net, wt)?;
    if let Some(t) = tok {
        meta.extend(super::tokenizer::gguf_meta(t, net.cfg.vocab_size)?);
    }
    let mut tensors = Vec::new();
    for (hf, t) in net.named_parameters() {
        let g = names::gguf_name(&hf).ok_or_else(|| {
            Error::invalid("save", format!("tensor `{hf}` has no llama.cpp name"))
        })?;
        let shape = t.shape().to_vec();
        let mut x = t.to_vec_f32()?;
        let bad = x.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::NonFinite {
                tensor: hf,
                count: bad,
                total: x.len(),
            });
        }
        if let (GgufArch::Llama, Some(k)) = (arch, names::qk_of(&hf)) {
            let heads = if k == "q" {
                net.cfg.num_attention_heads
            } else {
                net.cfg.num_key_value_heads
            };
            x = names::permute_rows(&x, &shape, heads);
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let (ty, bytes) = encode(&x, &dims, wt);
        // a finite f32 can overflow f16 (|x| > 65504), or a Q8_0 block's f16 scale
        let mut back = vec![0f32; x.len()];
        quant::dequantize(ty, &bytes, &mut back);
        let bad = back.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::invalid(
                "save",
                format!("tensor `{hf}`: {bad} value(s) overflow {} (its range is +-65504); save with --dtype f32 or bf16", ty.name()),
            ));
        }
        tensors.push(OutTensor {
            name: g,
            dims,
            ty,
            bytes,
        });
    }
    if let Some(f) = rope_freqs(&net.cfg) {
        tensors.push(OutTensor {
            name: "rope_freqs.weight".into(),
            dims: vec![f.len() as u64],
            ty: GgmlType::F32,
            bytes: bytemuck::cast_slice(&f).to_vec(),
        });
    }
    Ok(format::serialize(&meta, &tensors))
}

/// Llama 3.1 rope scaling as llama.cpp's converter stores it: one f32 divisor per
/// frequency, tensor `rope_freqs.weight` (HD/2).
fn rope_freqs(c: &crate::model::Config) -> Option<Vec<f32>> {
    let p = c.rope_scaling.llama3()?;
    Some(super::rope_freqs::llama3_factors(
        c.rope_theta,
        c.head_dim,
        p,
    ))
}

/// Write `net` and `tok` to the new GGUF file `out` (never replacing a file: see
/// [`crate::files::write_new`]).
pub fn save_gguf(net: &Transformer, tok: Option<&Tok>, out: &Path, wt: WeightType) -> Result<()> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::file(
            out,
            "already exists; ponder does not overwrite a file: choose another --out",
        ));
    }
    let bytes = gguf_bytes(net, tok, wt)?;
    net.check_probe_logits()?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::files::write_new(out, &bytes)
}
