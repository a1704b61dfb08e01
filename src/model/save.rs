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

/// Write `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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
            match d {
                CpuData::F32(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::F32),
                CpuData::F16(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::F16),
                CpuData::BF16(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::BF16),
                CpuData::F64(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::F64),
                CpuData::U32(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::U32),
                CpuData::I32(v) => (bytemuck::cast_slice(&v[o..o + n]).to_vec(), Dtype::I32),
            }
        });
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
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
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
    // a sharded index left in the output directory would shadow the new single file
    let stale = out.join("model.safetensors.index.json");
    if stale.exists() {
        std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
    }
    let text =
        serde_json::to_string_pretty(&cfg).map_err(|e| Error::invalid("save", e.to_string()))?;
    write_atomic(&out.join("config.json"), text.as_bytes())?;
    write_atomic(
        &out.join("model.safetensors"),
        &safetensors_bytes(&net.named_parameters(), dtype)?,
    )?;
    if let Some(src) = src_dir {
        for f in TOKENIZER_FILES {
            let p = src.join(f);
            if p.exists() && src != out {
                let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                write_atomic(&out.join(f), &bytes)?;
            }
        }
    }
    Ok(())
}
