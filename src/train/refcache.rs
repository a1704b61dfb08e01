//! The frozen reference model's per-token log-probs, computed once under `no_grad` and
//! kept in a file: every loss type (summed or averaged log-probs) can be computed from it,
//! and it is memory-mapped, so no reference weights stay on the device while training.
//!
//! Layout (little-endian):
//!   magic "PONDREF1" | key u64 | pairs u64 | values u64 | checksum u64 (xxh3 of the rest)
//!   offsets u64 x (2 * pairs + 1) | values f32 x values
//! Pair i's chosen tokens are values[off[2i]..off[2i+1]], rejected off[2i+1]..off[2i+2].
//! The key hashes the reference weights, tokenizer, tokenised data and truncation settings,
//! so a file built for anything else is stale; a checksum mismatch means corruption.
//! Either way the cache is rebuilt, with a message. A file at the cache path that ponder
//! did not write (no magic, or not a regular file) is never replaced: that is an error.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use xxhash_rust::xxh3::Xxh3;

use super::data::Pair;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"PONDREF1";
/// Bumped whenever the way log-probs are computed changes, so older caches go stale.
const NUMERICS_VERSION: &[u8] = b"ponder-logps-2";
const HEADER: usize = 40;

/// Streaming key builder.
pub struct KeyHasher(Xxh3);

impl Default for KeyHasher {
    fn default() -> Self {
        let mut h = Xxh3::new();
        h.update(MAGIC);
        h.update(NUMERICS_VERSION);
        KeyHasher(h)
    }
}

impl KeyHasher {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }
    /// Hash a file's content (memory-mapped, so large checkpoints are read once, fast).
    pub fn file(&mut self, path: &Path) -> Result<&mut Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only mapping of a file we only read.
        let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        Ok(self.bytes(&m))
    }
    /// Every weight file and the tokenizer of a model directory.
    pub fn model_dir(&mut self, dir: &Path) -> Result<&mut Self> {
        if crate::model::gguf::is_gguf(dir) {
            return self.file(dir);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.ends_with(".safetensors")
                    || n == "config.json"
                    || n == "tokenizer.json"
                    || n == "model.safetensors.index.json"
            })
            .collect();
        files.sort();
        for f in files {
            self.bytes(
                f.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .as_bytes(),
            );
            self.file(&f)?;
        }
        Ok(self)
    }
    pub fn pairs(&mut self, pairs: &[Pair]) -> &mut Self {
        for p in pairs {
            self.seqs(std::slice::from_ref(&p.chosen))
                .seqs(std::slice::from_ref(&p.rejected));
        }
        self
    }
    pub fn seqs(&mut self, seqs: &[super::data::Seq]) -> &mut Self {
        for s in seqs {
            self.bytes(bytemuck::cast_slice(&s.ids));
            self.bytes(&(s.prompt_len as u64).to_le_bytes());
        }
        self
    }
    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// Per-token reference log-probs of every pair, for building a cache.
pub struct RefLogps {
    pub chosen: Vec<Vec<f32>>,
    pub rejected: Vec<Vec<f32>>,
}

/// Write the cache atomically.
pub fn write(path: &Path, key: u64, r: &RefLogps) -> Result<()> {
    let n = r.chosen.len();
    let mut offsets = vec![0u64];
    let mut values: Vec<f32> = Vec::new();
    for i in 0..n {
        for v in [&r.chosen[i], &r.rejected[i]] {
            values.extend(v);
            offsets.push(values.len() as u64);
        }
    }
    let mut body = Vec::with_capacity(offsets.len() * 8 + values.len() * 4);
    body.extend(bytemuck::cast_slice(&offsets));
    body.extend(bytemuck::cast_slice(&values));
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend(MAGIC);
    out.extend(key.to_le_bytes());
    out.extend((n as u64).to_le_bytes());
    out.extend((values.len() as u64).to_le_bytes());
    out.extend(xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    out.extend(body);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::files::write_atomic(path, &out)
}

/// An opened, validated cache.
pub struct RefCache {
    map: Mmap,
    pairs: usize,
    values: usize,
}

/// Why an existing file cannot be used.
#[derive(Debug)]
pub enum Invalid {
    Missing,
    /// Not a file ponder wrote: never rebuilt over, since it may be the user's data.
    Foreign(String),
    Stale(String),
    Corrupt(String),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl RefCache {
    /// Open `path` and check magic, key, sizes and checksum.
    pub fn open(path: &Path, key: u64, pairs: usize) -> std::result::Result<RefCache, Invalid> {
        match std::fs::symlink_metadata(path) {
            Err(_) => return Err(Invalid::Missing),
            Ok(m) if !m.file_type().is_file() => {
                return Err(Invalid::Foreign(
                    "it is not a regular file (a directory, link or device)".into(),
                ))
            }
            Ok(_) => {}
        }
        let Ok(f) = std::fs::File::open(path) else {
            return Err(Invalid::Foreign("it cannot be opened for reading".into()));
        };
        // SAFETY: read-only mapping; the checksum below guards the contents we rely on.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| Invalid::Corrupt(e.to_string()))?;
        if map.len() < 8 || &map[..8] != MAGIC {
            return Err(Invalid::Foreign(
                "it does not start with ponder's cache magic PONDREF1".into(),
            ));
        }
        if map.len() < HEADER {
            return Err(Invalid::Corrupt("shorter than its header".into()));
        }
        if u64_at(&map, 8) != key {
            return Err(Invalid::Stale(
                "built for other reference weights, tokenizer, data or truncation settings".into(),
            ));
        }
        let (n, values) = (u64_at(&map, 16) as usize, u64_at(&map, 24) as usize);
        if n != pairs {
            return Err(Invalid::Stale(format!(
                "holds {n} pairs, the data has {pairs}"
            )));
        }
        let want = (2 * n + 1)
            .checked_mul(8)
            .and_then(|o| values.checked_mul(4).and_then(|v| o.checked_add(v)));
        if want != Some(map.len() - HEADER) {
            return Err(Invalid::Corrupt(
                "size does not match its header (truncated?)".into(),
            ));
        }
        if xxhash_rust::xxh3::xxh3_64(&map[HEADER..]) != u64_at(&map, 32) {
            return Err(Invalid::Corrupt("checksum mismatch".into()));
        }
        let c = RefCache {
            map,
            pairs: n,
            values,
        };
        for i in 0..=2 * n {
            if c.offset(i) as usize > values || (i > 0 && c.offset(i) < c.offset(i - 1)) {
                return Err(Invalid::Corrupt("offsets out of order".into()));
            }
        }
        Ok(c)
    }

    fn offset(&self, i: usize) -> u64 {
        u64_at(&self.map, HEADER + 8 * i)
    }

    /// Per-token log-probs of pair `i`: (chosen, rejected).
    pub fn get(&self, i: usize) -> (Vec<f32>, Vec<f32>) {
        assert!(i < self.pairs);
        let base = HEADER + 8 * (2 * self.pairs + 1);
        let read = |a: u64, b: u64| -> Vec<f32> {
            bytemuck::pod_collect_to_vec(&self.map[base + 4 * a as usize..base + 4 * b as usize])
        };
        (
            read(self.offset(2 * i), self.offset(2 * i + 1)),
            read(self.offset(2 * i + 1), self.offset(2 * i + 2)),
        )
    }

    pub fn len(&self) -> usize {
        self.pairs
    }
    pub fn is_empty(&self) -> bool {
        self.pairs == 0
    }
    pub fn values(&self) -> usize {
        self.values
    }
}
