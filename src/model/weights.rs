//! Safetensors checkpoints read through memmap2: `model.safetensors`, or the shards listed
//! in `model.safetensors.index.json`. Headers are validated by the safetensors crate (which
//! caps the header size and checks every offset against the file) before any tensor is
//! touched; each tensor is then checked against the shape the config implies and copied
//! straight from the mapping to its device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{CpuData, Device, Storage, Tensor};

pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
    /// A GGUF file instead of safetensors: tensors come from it under their Hugging Face
    /// names, dequantized on load.
    gguf: Option<Box<super::gguf::GgufFile>>,
}

fn map(path: &Path) -> Result<Mmap> {
    crate::files::require_regular(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only; a checkpoint modified while ponder reads it is
    // outside what ponder can guard against (as with every mmap-based loader).
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Drop the pages of a tensor that has been copied out, so that the mapping does not keep
/// a second copy of the model resident while the rest loads.
fn release(m: &Mmap, (offset, len): (usize, usize)) {
    #[cfg(unix)]
    // SAFETY: the mapping is read-only and file-backed: dropped pages are re-read from the
    // file if touched again, and the bytes of this tensor have already been copied.
    unsafe {
        let _ = m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
    #[cfg(not(unix))]
    let _ = (m, offset, len);
}

fn header_error(path: &Path, e: safetensors::SafeTensorError) -> Error {
    Error::file(path, format!("invalid safetensors file (truncated, or a header whose offsets or sizes do not match the data): {e}"))
}

impl Checkpoint {
    /// Open every weight file of a model directory and validate the headers.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if super::gguf::is_gguf(dir) {
            return Ok(Checkpoint::from_gguf(super::gguf::GgufFile::open(dir)?));
        }
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index_path.exists() {
            let text = crate::files::read_regular_to_string(&index_path)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::file(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::file(
                        &index_path,
                        "field `weight_map` missing (expected an object of tensor name -> file)",
                    )
                })?;
            let mut files = Vec::new();
            for (name, f) in map {
                match f.as_str() {
                    Some(f) => files.push(f.to_string()),
                    None => {
                        return Err(Error::file(
                            &index_path,
                            format!("weight_map entry `{name}`: expected a file name, got {f}"),
                        ))
                    }
                }
            }
            if files.is_empty() {
                return Err(Error::file(&index_path, "`weight_map` lists no tensors"));
            }
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::file(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in names.into_iter().enumerate() {
            let m = map(&path)?;
            let st = SafeTensors::deserialize(&m).map_err(|e| header_error(&path, e))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((path, m));
        }
        Ok(Checkpoint {
            files,
            index,
            gguf: None,
        })
    }

    /// A checkpoint reading the tensors of an open GGUF file.
    pub fn from_gguf(g: super::gguf::GgufFile) -> Checkpoint {
        let index = g.hf_names().into_iter().map(|n| (n, 0)).collect();
        Checkpoint {
            files: vec![],
            index,
            gguf: Some(Box::new(g)),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// The file, mapping and header view of tensor `name` (None when absent).
    fn view(&self, name: &str) -> Result<Option<(&Path, &Mmap, TensorView<'_>)>> {
        let Some(&fi) = self.index.get(name) else {
            return Ok(None);
        };
        let (path, m) = &self.files[fi];
        let st = SafeTensors::deserialize(m).map_err(|e| header_error(path, e))?;
        let view = st.tensor(name).map_err(|e| header_error(path, e))?;
        Ok(Some((path.as_path(), m, view)))
    }

    /// Load tensor `name`, which must have `shape`. Float weights become f32 unless
    /// `keep_16bit` and they are stored as f16/bf16, in which case they stay 16-bit.
    pub fn load(
        &self,
        name: &str,
        shape: &[usize],
        device: Device,
        keep_16bit: bool,
        why: &str,
    ) -> Result<Tensor> {
        if let Some(g) = &self.gguf {
            return g.load(name, shape, device, keep_16bit, why);
        }
        let Some((path, m, view)) = self.view(name)? else {
            let dir = self.files[0].0.parent().unwrap_or(Path::new("."));
            return Err(Error::file(dir, format!("tensor `{name}` is missing from the checkpoint (expected shape {shape:?}{why})")));
        };
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(Error::file(
                    path,
                    format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
                ))
            }
        };
        if view.shape() != shape {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}{why}",
                    view.shape()
                ),
            ));
        }
        let bytes = view.data();
        let bad = non_finite(view.dtype(), bytes);
        if bad > 0 {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}` holds {bad} non-finite value(s) (NaN or inf) out of {}; the checkpoint is damaged or its training diverged",
                    shape.iter().product::<usize>()
                ),
            ));
        }
        let range = (bytes.as_ptr() as usize - m.as_ptr() as usize, bytes.len());
        if device == Device::Gpu && (dtype == DType::F32 || keep_16bit) {
            // straight from the mapping to the device, no host copy
            let buf = crate::backend::gpu::context()?.upload(bytes, name)?;
            release(m, range);
            return Ok(Tensor::from_storage(Storage::Gpu(buf), shape, dtype));
        }
        let raw = Tensor::from_cpu_data(
            host_data(view.dtype(), bytes).expect("float dtype checked above"),
            shape,
        )?;
        release(m, range);
        let t = if dtype != DType::F32 && !keep_16bit {
            raw.to_dtype(DType::F32)?
        } else {
            raw
        };
        t.to_device(device)
    }

    /// Any float or integer tensor on the CPU, as stored (for references and tests).
    pub fn load_any(&self, name: &str) -> Result<Tensor> {
        if let Some(g) = &self.gguf {
            let t = g
                .tensor(&super::gguf::names::gguf_name(name).unwrap_or_default())
                .ok_or_else(|| Error::invalid("checkpoint", format!("no tensor `{name}`")))?
                .shape();
            return g.load(name, &t, Device::Cpu, false, "");
        }
        let (path, _, view) = self
            .view(name)?
            .ok_or_else(|| Error::invalid("checkpoint", format!("no tensor `{name}`")))?;
        let data = host_data(view.dtype(), view.data()).ok_or_else(|| {
            Error::file(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        Tensor::from_cpu_data(data, view.shape())
    }
}

/// How many stored float values are NaN or infinite (all exponent bits set), read from
/// the little-endian bytes without converting them.
fn non_finite(dtype: Dtype, bytes: &[u8]) -> usize {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .count(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00)
            .count(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80)
            .count(),
        _ => 0,
    }
}

/// Copy (realigning) stored bytes into host data; i64 ids narrow to i32.
fn host_data(dtype: Dtype, bytes: &[u8]) -> Option<CpuData> {
    Some(match dtype {
        Dtype::F32 => CpuData::F32(bytemuck::pod_collect_to_vec(bytes)),
        Dtype::F16 => CpuData::F16(bytemuck::pod_collect_to_vec(bytes)),
        Dtype::BF16 => CpuData::BF16(bytemuck::pod_collect_to_vec(bytes)),
        Dtype::I32 => CpuData::I32(bytemuck::pod_collect_to_vec(bytes)),
        Dtype::I64 => CpuData::I32(
            bytemuck::pod_collect_to_vec::<u8, i64>(bytes)
                .into_iter()
                .map(|v| v as i32)
                .collect(),
        ),
        _ => return None,
    })
}

/// Open a single safetensors file (e.g. a reference dump) as a checkpoint.
pub fn open_file(path: &Path) -> Result<Checkpoint> {
    let m = map(path)?;
    let st = SafeTensors::deserialize(&m).map_err(|e| header_error(path, e))?;
    let index = st.names().into_iter().map(|n| (n.to_string(), 0)).collect();
    Ok(Checkpoint {
        files: vec![(path.to_path_buf(), m)],
        index,
        gguf: None,
    })
}
