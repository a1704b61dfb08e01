//! The GGUF container (versions 2 and 3, little-endian): a header, typed metadata
//! key-value pairs, a table of tensor infos, then the aligned tensor data.
//!
//! Every count and size in the file is untrusted: a count is checked against the bytes
//! left before anything is allocated for it, arrays nest at most [`MAX_DEPTH`] deep, and
//! each tensor's byte range is checked against the file (a truncated file is an error
//! naming the first tensor that does not fit).

use std::collections::BTreeMap;
use std::path::Path;

use super::quant::GgmlType;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"GGUF";
/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// How deep arrays of arrays may nest.
const MAX_DEPTH: usize = 3;
/// Dimensions a ggml tensor may have.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The file's type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description for error messages ("an array of 3 values", "the string ...").
    pub fn describe(&self) -> String {
        match self {
            Value::Str(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Array(a) => format!("an array of {} values", a.len()),
            v => format!("{v:?}"),
        }
    }
}

/// One tensor's entry in the table: its name, ggml dimensions (`dims[0]` varies fastest,
/// so a (rows, cols) matrix is stored as `[cols, rows]`), type and byte range.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes the tensor occupies.
    pub size: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// The shape in row-major order (outermost first), as Hugging Face writes it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed header: version, metadata, tensor table, and where the data starts.
#[derive(Debug)]
pub struct Header {
    pub version: u32,
    pub meta: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl std::fmt::Display) -> Error {
        Error::file(
            self.path,
            format!("invalid GGUF file at byte {}: {what}", self.pos),
        )
    }
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes, {} are left",
                self.left()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    /// A count of items that take at least `min_bytes` each: refused when the file
    /// cannot hold that many, so no allocation follows an unchecked count.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let fits = (self.left() / min_bytes.max(1)) as u64;
        if n > fits {
            return Err(self.err(format!(
                "{what} is {n}, more than the {} bytes left can hold (the file is truncated or damaged)",
                self.left()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("key `{key}`: a bool of value {b}"))),
            },
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!(
                        "key `{key}`: arrays nested more than {MAX_DEPTH} deep"
                    )));
                }
                let ety = self.u32(key)?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("key `{key}`: unknown value type {t}"))),
                };
                let n = self.count(key, min)?;
                // each value is held as a `Value`, larger than its bytes in the file
                let need = n as u64 * std::mem::size_of::<Value>() as u64;
                if crate::util::available().is_some_and(|a| need > a) {
                    return Err(self.err(format!(
                        "key `{key}`: an array of {n} values needs {} in memory, more than is available",
                        crate::util::gib(need)
                    )));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            t => return Err(self.err(format!("key `{key}`: unknown value type {t}"))),
        })
    }
}

/// Parse the header of a GGUF file held in `b` (the whole file).
pub fn parse(path: &Path, b: &[u8]) -> Result<Header> {
    let mut r = Reader { b, pos: 0, path };
    if r.take(4, "the magic")? != MAGIC {
        return Err(Error::file(
            path,
            "not a GGUF file (it does not start with the bytes `GGUF`)",
        ));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::file(path, "GGUF version 1 (from before October 2023) is not supported; convert it with a current llama.cpp")),
        v if v.swap_bytes() <= 3 => return Err(Error::file(path, "a big-endian GGUF file; ponder reads little-endian files only")),
        v => return Err(Error::file(path, format!("GGUF version {v} is not supported (ponder reads versions 2 and 3)"))),
    }
    // a tensor info takes at least 8 (name) + 4 + 4 + 8 bytes; a key-value 8 + 4 + 1
    let n_tensors = r.count("the tensor count", 24)?;
    let n_kv = r.count("the metadata count", 13)?;
    let mut meta = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("a metadata key")?;
        let ty = r.u32(&key)?;
        let v = r.value(ty, &key, 0)?;
        if meta.insert(key.clone(), v).is_some() {
            return Err(r.err(format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match meta.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(Error::file(
                    path,
                    format!(
                        "general.alignment is {}; expected a power of two",
                        v.describe()
                    ),
                ))
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name = r.string("a tensor name")?;
        let nd = r.u32(&name)?;
        if nd == 0 || nd > MAX_DIMS {
            return Err(r.err(format!(
                "tensor `{name}` has {nd} dimensions (expected 1..={MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(r.u64(&name)?);
        }
        let id = r.u32(&name)?;
        let ty = GgmlType::from_id(id).map_err(|t| {
            Error::file(
                path,
                format!("tensor `{name}` has ggml type {id} ({t}), which ponder cannot read; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, Q8_K"),
            )
        })?;
        let offset = r.u64(&name)?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!("tensor `{name}` has dimensions {dims:?}: empty or too large"),
                )
            })?;
        if dims[0] % ty.block().0 as u64 != 0 {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}`: its rows of {} values are not whole {} blocks of {}",
                    dims[0],
                    ty.name(),
                    ty.block().0
                ),
            ));
        }
        let size = ty
            .bytes_of(numel)
            .ok_or_else(|| Error::file(path, format!("tensor `{name}`: size overflows")))?;
        if offset % alignment != 0 {
            return Err(Error::file(
                path,
                format!("tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(Error::file(path, format!("tensor `{name}` appears twice")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.size));
        if end.is_none_or(|e| e > b.len() as u64) {
            return Err(Error::file(
                path,
                format!(
                    "truncated: tensor `{}` ({} {:?}) needs bytes {}..{} of the data section, but the file ends {} bytes into it",
                    t.name,
                    t.ty.name(),
                    t.shape(),
                    t.offset,
                    t.offset.saturating_add(t.size),
                    (b.len() as u64).saturating_sub(data_start)
                ),
            ));
        }
    }
    Ok(Header {
        version,
        meta,
        tensors,
        alignment,
        data_start,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => {
            // an empty array is written as an array of strings, as gguf-py does
            let ety = a.first().map_or(8, Value::type_id);
            out.extend_from_slice(&ety.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// A tensor to write: its name, ggml dimensions, type and encoded bytes.
pub struct OutTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub bytes: Vec<u8>,
}

/// Serialize a GGUF v3 file: metadata in the given order, then tensors in the given order,
/// each aligned to [`DEFAULT_ALIGNMENT`].
pub fn serialize(meta: &[(String, Value)], tensors: &[OutTensor]) -> Vec<u8> {
    let a = DEFAULT_ALIGNMENT;
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(t.ty as u32).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.bytes.len() as u64).div_ceil(a) * a;
    }
    let pad = |out: &mut Vec<u8>| {
        let len = (out.len() as u64).div_ceil(a) * a;
        out.resize(len as usize, 0);
    };
    pad(&mut out);
    for t in tensors {
        out.extend_from_slice(&t.bytes);
        pad(&mut out);
    }
    out
}
