//! GGUF, llama.cpp's checkpoint format, read and written as a checkpoint of its own: one
//! file holding the config (as `llama.*` / `qwen2.*` metadata), the tokenizer
//! (`tokenizer.ggml.*`), the chat template and the tensors, possibly quantized.
//!
//! Reading maps it onto what a Hugging Face directory would hold: a config.json value,
//! tokenizer.json / tokenizer_config.json values, and tensors under their Hugging Face
//! names, dequantized to f32 on load (f16 and bf16 stay 16-bit where the caller keeps
//! 16-bit weights). llama.cpp stores Llama's q_proj and k_proj rows interleaved for its
//! rotary kernel; the interleave is undone on load and applied again on save.
//!
//! - `format`: the container (header, metadata, tensor table), parse and serialize;
//! - `rope_freqs`: Llama 3.1 rope scaling as per-frequency divisors;
//! - `quant`: ggml's block types, dequantization, Q8_0 quantization;
//! - `names`: Hugging Face <-> llama.cpp tensor names and the q/k interleave;
//! - `tokenizer`: `tokenizer.ggml.*` <-> tokenizer.json;
//! - `spm`: the `llama` tokenizer model (SentencePiece BPE) as tokenizer.json's BPE;
//! - `write`: a model and its tokenizer to a .gguf file.

pub mod format;
pub mod names;
pub mod quant;
pub mod rope_freqs;
pub mod spm;
pub mod tokenizer;
pub mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{json, Value as Json};

pub use format::{Header, TensorInfo, Value};
pub use quant::GgmlType;

use crate::error::{Error, Result};
use crate::tensor::{CpuData, Device, Tensor};

/// ponder's own metadata key: Llama 3.1 rope scaling's parameters as JSON, written beside
/// llama.cpp's `rope_freqs.weight` (which holds only the divisors they give), so that a
/// file ponder wrote reads back to the very config.json.
pub const LLAMA3_KEY: &str = "ponder.rope_scaling.llama3";

/// Whether `path` is a GGUF file: a regular file whose first bytes are `GGUF`, or any
/// path named `*.gguf` (so that a damaged one is reported as a GGUF error, not as a
/// missing model directory).
pub fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    if !path.is_file() {
        return false;
    }
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == format::MAGIC
}

/// An open GGUF file: the mapping and its parsed header.
pub struct GgufFile {
    pub path: PathBuf,
    map: Mmap,
    pub header: Header,
    by_name: HashMap<String, usize>,
}

/// The architectures whose metadata ponder maps onto its decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    Llama,
    Qwen2,
}

impl GgufArch {
    pub fn name(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
        }
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        crate::files::require_regular(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a read-only mapping; a file changed while ponder reads it is outside what
        // any mmap-based loader can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = format::parse(path, &map)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
            by_name,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.header.meta.get(key)
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::file(&self.path, msg)
    }

    /// A required non-negative integer.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        match self.meta(key) {
            None => Err(self.err(format!("metadata key `{key}` is missing"))),
            Some(v) => v.as_u64().ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}` is {}; expected an integer",
                    v.describe()
                ))
            }),
        }
    }

    pub fn meta_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.meta(key).map(|_| self.meta_u64(key)).transpose()
    }

    pub fn meta_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.meta(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}` is {}; expected a number",
                    v.describe()
                ))
            }),
        }
    }

    pub fn meta_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.meta(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata key `{key}` is {}; expected a string",
                    v.describe()
                ))
            }),
        }
    }

    pub fn arch(&self) -> Result<GgufArch> {
        match self.meta_str_opt("general.architecture")? {
            Some("llama") => Ok(GgufArch::Llama),
            Some("qwen2") => Ok(GgufArch::Qwen2),
            Some(other) => Err(self.err(format!(
                "architecture `{other}` (general.architecture) is not supported; ponder reads the `llama` and `qwen2` architectures"
            ))),
            None => Err(self.err("metadata key `general.architecture` is missing")),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The stored bytes of a tensor (bounds checked when the header was parsed).
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        let s = (self.header.data_start + t.offset) as usize;
        &self.map[s..s + t.size as usize]
    }

    /// The values of a tensor as f32, row-major in its Hugging Face shape.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let n = usize::try_from(t.numel())
            .map_err(|_| self.err(format!("tensor `{}` is too large", t.name)))?;
        // the size was checked against the file's bytes; it can still exceed memory
        if let Some(avail) = crate::util::available() {
            if n as u64 * 4 > avail {
                return Err(self.err(format!(
                    "tensor `{}` needs {} as f32, more than the {} of memory available",
                    t.name,
                    crate::util::gib(n as u64 * 4),
                    crate::util::gib(avail)
                )));
            }
        }
        let mut out = vec![0f32; n];
        quant::dequantize(t.ty, self.bytes(t), &mut out);
        Ok(out)
    }

    /// config.json as transformers would write it for this model.
    pub fn hf_config(&self) -> Result<Json> {
        let arch = self.arch()?;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let heads = self.meta_u64(&key("attention.head_count"))?;
        let kv_heads = self
            .meta_u64_opt(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        let hidden = self.meta_u64(&key("embedding_length"))?;
        let embd = self.tensor("token_embd.weight").ok_or_else(|| {
            self.err("tensor `token_embd.weight` (the token embedding) is missing")
        })?;
        let vocab = match self.meta_u64_opt(&key("vocab_size"))? {
            Some(v) => v,
            None => *embd.dims.get(1).unwrap_or(&0),
        };
        let mut cfg = json!({
            "architectures": [match arch { GgufArch::Llama => "LlamaForCausalLM", GgufArch::Qwen2 => "Qwen2ForCausalLM" }],
            "model_type": a,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "intermediate_size": self.meta_u64(&key("feed_forward_length"))?,
            "num_hidden_layers": self.meta_u64(&key("block_count"))?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": vocab,
            "rms_norm_eps": self.meta_f64_opt(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            "rope_theta": self.meta_f64_opt(&key("rope.freq_base"))?.unwrap_or(10000.0),
            "max_position_embeddings": self.meta_u64_opt(&key("context_length"))?.unwrap_or(4096),
            "tie_word_embeddings": self.tensor("output.weight").is_none(),
            "torch_dtype": "float32",
        });
        let o = cfg.as_object_mut().expect("an object");
        if let Some(hd) = self.meta_u64_opt(&key("attention.key_length"))? {
            if heads == 0 || hd != hidden / heads {
                o.insert("head_dim".into(), hd.into());
            }
        }
        if let Some(rd) = self.meta_u64_opt(&key("rope.dimension_count"))? {
            let hd = o
                .get("head_dim")
                .and_then(|v| v.as_u64())
                .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
            if rd != hd {
                return Err(self.err(format!(
                    "{a}.rope.dimension_count is {rd} but the head dim is {hd}: partial rotary embedding is not supported"
                )));
            }
        }
        if arch == GgufArch::Llama {
            let bias = self.tensor("blk.0.attn_q.bias").is_some();
            o.insert("attention_bias".into(), bias.into());
            o.insert(
                "mlp_bias".into(),
                self.tensor("blk.0.ffn_up.bias").is_some().into(),
            );
        }
        if let Some(t) = self.tensor("rope_freqs.weight") {
            let p = self.llama3_rope(t, o)?;
            o.insert(
                "rope_scaling".into(),
                json!({"rope_type": "llama3", "factor": p.0, "low_freq_factor": p.1,
                    "high_freq_factor": p.2, "original_max_position_embeddings": p.3}),
            );
        }
        match self.meta_str_opt(&key("rope.scaling.type"))? {
            None | Some("none") => {}
            Some("linear") => {
                let f = self
                    .meta_f64_opt(&key("rope.scaling.factor"))?
                    .ok_or_else(|| self.err(format!("{a}.rope.scaling.factor is missing")))?;
                o.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": f}),
                );
            }
            Some(other) => {
                return Err(self.err(format!(
                    "rope scaling `{other}` ({a}.rope.scaling.type) is not supported; ponder reads none and linear"
                )))
            }
        }
        for (k, field) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
            ("tokenizer.ggml.padding_token_id", "pad_token_id"),
        ] {
            if let Some(id) = self.meta_u64_opt(k)? {
                o.insert(field.into(), id.into());
            }
        }
        Ok(cfg)
    }

    /// Llama 3.1's rope scaling parameters `(factor, low_freq_factor, high_freq_factor,
    /// original_max_position_embeddings)` behind the per-frequency divisors of tensor `t`
    /// (`rope_freqs.weight`), for the config `o` built so far: those ponder wrote beside
    /// them, or else those the divisors follow (see [`rope_freqs::llama3_from_factors`]).
    fn llama3_rope(
        &self,
        t: &TensorInfo,
        o: &serde_json::Map<String, Json>,
    ) -> Result<(f64, f64, f64, f64)> {
        let num = |k: &str| o.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
        let theta = num("rope_theta");
        let hd = match o.get("head_dim").and_then(|v| v.as_u64()) {
            Some(hd) => hd as usize,
            None => (num("hidden_size") / num("num_attention_heads").max(1.0)) as usize,
        };
        let f = self.dequantize(t)?;
        if f.len() != hd / 2 {
            return Err(self.err(format!(
                "tensor `rope_freqs.weight` holds {} values; the head dim {hd} asks for {}",
                f.len(),
                hd / 2
            )));
        }
        let follows = |p: (f64, f64, f64, f64)| {
            let again = rope_freqs::llama3_factors(theta, hd, p);
            again
                .iter()
                .zip(&f)
                .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs())
        };
        if let Some(s) = self.meta_str_opt(LLAMA3_KEY)? {
            let j: Json = serde_json::from_str(s)
                .map_err(|e| self.err(format!("{LLAMA3_KEY} is not JSON: {e}")))?;
            let g = |k: &str| j.get(k).and_then(|v| v.as_f64());
            if let (Some(a), Some(b), Some(c), Some(d)) = (
                g("factor"),
                g("low_freq_factor"),
                g("high_freq_factor"),
                g("original_max_position_embeddings"),
            ) {
                if follows((a, b, c, d)) {
                    return Ok((a, b, c, d));
                }
            }
        }
        rope_freqs::llama3_from_factors(theta, hd, &f).ok_or_else(|| {
            self.err("tensor `rope_freqs.weight` holds per-frequency rope factors that follow no Llama 3.1 rope scaling (factor, low/high_freq_factor, original_max_position_embeddings) with at least two blended frequencies; ponder reads only that kind")
        })
    }

    /// The config, through the same checks as a config.json.
    pub fn config(&self) -> Result<crate::model::Config> {
        crate::model::Config::from_json(&self.path, self.hf_config()?)
    }

    /// Load the tensor with Hugging Face name `hf` as the decoder asks for it (see
    /// [`crate::model::weights::Checkpoint::load`]).
    pub fn load(
        &self,
        hf: &str,
        shape: &[usize],
        device: Device,
        keep_16bit: bool,
        why: &str,
    ) -> Result<Tensor> {
        let cfg_heads = |k: &str| -> Result<usize> {
            let arch = self.arch()?.name();
            let heads = self.meta_u64(&format!("{arch}.attention.head_count"))?;
            Ok(match k {
                "q" => heads,
                _ => self
                    .meta_u64_opt(&format!("{arch}.attention.head_count_kv"))?
                    .unwrap_or(heads),
            } as usize)
        };
        let Some(g) = names::gguf_name(hf) else {
            return Err(self.err(format!(
                "tensor `{hf}` has no llama.cpp name (expected shape {shape:?}{why})"
            )));
        };
        let Some(t) = self.tensor(&g) else {
            return Err(self.err(format!(
                "tensor `{g}` (Hugging Face `{hf}`) is missing (expected shape {shape:?}{why})"
            )));
        };
        if t.shape() != shape {
            return Err(self.err(format!(
                "tensor `{g}` (Hugging Face `{hf}`) has shape {:?}, expected {shape:?}{why}",
                t.shape()
            )));
        }
        let permute = match (self.arch()?, names::qk_of(hf)) {
            (GgufArch::Llama, Some(k)) => Some(cfg_heads(k)?),
            _ => None,
        };
        let data = match t.ty {
            GgmlType::F16 | GgmlType::BF16 if keep_16bit => {
                let raw: Vec<u16> = bytemuck::pod_collect_to_vec(self.bytes(t));
                let raw = match permute {
                    Some(h) => names::unpermute_rows(&raw, shape, h),
                    None => raw,
                };
                let exp = if t.ty == GgmlType::F16 {
                    0x7c00
                } else {
                    0x7f80
                };
                self.check_finite(&g, raw.iter().filter(|&&x| x & exp == exp).count(), &raw)?;
                if t.ty == GgmlType::F16 {
                    CpuData::F16(bytemuck::cast_vec(raw))
                } else {
                    CpuData::BF16(bytemuck::cast_vec(raw))
                }
            }
            _ => {
                let v = self.dequantize(t)?;
                let v = match permute {
                    Some(h) => names::unpermute_rows(&v, shape, h),
                    None => v,
                };
                self.check_finite(&g, v.iter().filter(|x| !x.is_finite()).count(), &v)?;
                CpuData::F32(v)
            }
        };
        Tensor::from_cpu_data(data, shape)?.to_device(device)
    }

    fn check_finite<T>(&self, name: &str, bad: usize, all: &[T]) -> Result<()> {
        if bad > 0 {
            return Err(self.err(format!(
                "tensor `{name}` holds {bad} non-finite value(s) (NaN or inf) out of {}; the file is damaged",
                all.len()
            )));
        }
        Ok(())
    }

    /// The Hugging Face names of the tensors the file holds.
    pub fn hf_names(&self) -> Vec<String> {
        self.header
            .tensors
            .iter()
            .filter_map(|t| names::hf_name(&t.name))
            .collect()
    }
}
