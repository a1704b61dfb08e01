//! Saving a model directory that transformers loads unchanged: config.json,
//! model.safetensors (Hugging Face key names) and the tokenizer files. Files are written
//! to a temporary name and renamed, so a crash never leaves a half-written checkpoint.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::transformer::Transformer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{CpuData, Tensor};

/// Files copied from the source model directory when present.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// The tokenizer files of a model: those of [`TOKENIZER_FILES`] present in a model
/// directory, or, for a GGUF file, tokenizer.json, tokenizer_config.json and
/// generation_config.json built from its metadata.
pub fn tokenizer_files(src: &Path) -> Result<Vec<(&'static str, Vec<u8>)>> {
    if super::gguf::is_gguf(src) {
        let g = super::gguf::GgufFile::open(src)?;
        let (tok, cfg, gen) = match super::gguf::tokenizer::hf_files(&g) {
            Ok(Some(files)) => files,
            Ok(None) => return Ok(vec![]),
            // the weights are still worth saving: say why no tokenizer goes with them
            Err(e) => {
                eprintln!("note: {e}; no tokenizer files are written");
                return Ok(vec![]);
            }
        };
        let pretty = |v: &serde_json::Value| -> Result<Vec<u8>> {
            serde_json::to_vec_pretty(v).map_err(|e| Error::invalid("save", e.to_string()))
        };
        return Ok(vec![
            ("tokenizer.json", pretty(&tok)?),
            ("tokenizer_config.json", pretty(&cfg)?),
            ("generation_config.json", pretty(&gen)?),
        ]);
    }
    let mut out = Vec::new();
    for f in TOKENIZER_FILES {
        let p = src.join(f);
        if p.exists() {
            crate::files::require_regular(&p)?;
            out.push((f, std::fs::read(&p).map_err(|e| Error::io(&p, e))?));
        }
    }
    Ok(out)
}

/// Write `bytes` to `path` atomically (see [`crate::files::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::files::write_atomic(path, bytes)
}

/// Serialize named tensors to safetensors bytes in `dtype` (f32, f16 or bf16).
pub fn safetensors_bytes(tensors: &[(String, Tensor)], dtype: DType) -> Result<Vec<u8>> {
    let mut raw: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = Vec::new();
    for (name, t) in tensors {
        let t = crate::autograd::no_grad(|| t.to_device(crate::tensor::Device::Cpu)?.contiguous())?;
        let src_float = t.dtype().is_float();
        let t = if src_float {
            crate::autograd::no_grad(|| t.to_dtype(dtype))?
        } else {
            t
        };
        let (bytes, st) = t.with_cpu_data(|d, l| {
            let (o, n) = (l.offset, l.numel());
            let bad = match d {
                CpuData::F32(v) => v[o..o + n].iter().filter(|x| !x.is_finite()).count(),
                CpuData::F16(v) => v[o..o + n].iter().filter(|x| !x.is_finite()).count(),
                CpuData::BF16(v) => v[o..o + n].iter().filter(|x| !x.is_finite()).count(),
                CpuData::F64(v) => v[o..o + n].iter().filter(|x| !x.is_finite()).count(),
                CpuData::U32(_) | CpuData::I32(_) => 0,
            };
            if bad > 0 {
                return Err(Error::NonFinite {
                    tensor: name.clone(),
                    count: bad,
                    total: n,
                });
            }
            let out = match d {
                CpuData::F32(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::F32),
                CpuData::F16(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::F16),
                CpuData::BF16(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::BF16),
                CpuData::F64(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::F64),
                CpuData::U32(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::U32),
                CpuData::I32(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::I32),
            };
            Ok(out)
        })?;
        raw.push((name.clone(), bytes, t.shape().to_vec(), st));
    }
    let views: Vec<(String, TensorView)> = raw
        .iter()
        .map(|(n, b, s, d)| {
            Ok((
                n.clone(),
                TensorView::new(*d, s.clone(), b)
                    .map_err(|e| Error::invalid("save", format!("{n}: {e}")))?,
            ))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid("save", e.to_string()))
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Save `net` to `out` as a Hugging Face model directory, copying tokenizer files from
/// `src_dir` when given.
pub fn save_model(
    net: &Transformer,
    src_dir: Option<&Path>,
    out: &Path,
    dtype: DType,
) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::invalid(
            "save",
            format!("cannot save weights as {dtype}; use f32, f16 or bf16"),
        ));
    }
    let mut cfg = net.cfg.raw.clone();
    if let Some(o) = cfg.as_object_mut() {
        // update whichever spellings the file used; default to the 4.x one, which 5.x reads too
        let mut any = false;
        for key in ["torch_dtype", "dtype"] {
            if o.contains_key(key) {
                o.insert(key.into(), dtype_name(dtype).into());
                any = true;
            }
        }
        if !any {
            o.insert("torch_dtype".into(), dtype_name(dtype).into());
        }
    }
    let text =
        serde_json::to_string_pretty(&cfg).map_err(|e| Error::invalid("save", e.to_string()))?;
    // weights first: a non-finite value stops the save before anything is written
    let mut files = vec![
        (
            out.join("model.safetensors"),
            safetensors_bytes(&net.named_parameters(), dtype)?,
        ),
        (out.join("config.json"), text.into_bytes()),
    ];
    if let Some(src) = src_dir {
        let same = std::fs::canonicalize(src).ok() == std::fs::canonicalize(out).ok();
        if !same {
            for (f, bytes) in tokenizer_files(src)? {
                files.push((out.join(f), bytes));
            }
        }
    }
    // finite weights can still overflow in the forward: a model whose outputs are NaN is
    // no model, refused before anything is written
    net.check_probe_logits()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // every file is complete on disk before any replaces its old version: a full disk
    // leaves the old model loadable and no temporary file behind
    crate::files::write_all_atomic(&files)?;
    // a sharded index (and its shards) left in the directory would shadow the new file
    let stale = out.join("model.safetensors.index.json");
    if stale.is_file() {
        if let Ok(idx) = std::fs::read_to_string(&stale) {
            let shards: std::collections::BTreeSet<String> =
                serde_json::from_str::<serde_json::Value>(&idx)
                    .ok()
                    .and_then(|v| v.get("weight_map").cloned())
                    .and_then(|m| m.as_object().cloned())
                    .map(|m| {
                        m.values()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
            let written: Vec<&std::path::Path> = files.iter().map(|(p, _)| p.as_path()).collect();
            for sh in shards {
                // only a shard (`model-00001-of-00002.safetensors`, a plain name inside
                // `out`, a regular file) and never a file this save has just written
                let path = out.join(&sh);
                if is_shard_name(&sh)
                    && !written.contains(&path.as_path())
                    && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
                {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
    }
    Ok(())
}

/// Whether `name` is a shard file name as transformers writes them:
/// `model-00001-of-00003.safetensors` (a plain name, digits on both sides of `-of-`).
fn is_shard_name(name: &str) -> bool {
    let Some(stem) = name
        .strip_prefix("model-")
        .and_then(|s| s.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let Some((a, b)) = stem.split_once("-of-") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b)
}

#[cfg(test)]
mod shard_name_tests {
    use super::is_shard_name;

    #[test]
    fn only_transformers_shard_names_count() {
        assert!(is_shard_name("model-00001-of-00002.safetensors"));
        for n in [
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "model-x-of-2.safetensors",
            "../model-00001-of-00002.safetensors",
            "model-00001-of-00002.safetensors.bak",
        ] {
            assert!(!is_shard_name(n), "{n}");
        }
    }
}
