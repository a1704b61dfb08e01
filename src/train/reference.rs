//! The reference side of DPO from the command line: where a run's reference cache
//! lives, building it (or reusing a valid one) with a progress bar, and reading a batch's
//! summed reference log-probs back out of it.

use std::path::{Path, PathBuf};

use super::args::TrainArgs;
use super::data::{Pair, Seq};
use super::loss;
use super::refcache::{self, Invalid, RefCache, RefLogps};
use super::report::Summary;
use crate::error::{Error, Result};
use crate::model::transformer::LinearCtx;
use crate::model::Transformer;

fn log(msg: impl std::fmt::Display) {
    if crate::dist::is_root() {
        eprintln!("{msg}");
    }
}

/// Where the reference cache of this run lives.
pub(crate) fn cache_path(args: &TrainArgs, key: u64) -> PathBuf {
    if let Some(p) = &args.ref_cache {
        return p.clone();
    }
    let dir = match std::env::var_os("PONDER_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => args
            .data
            .parent()
            .unwrap_or(Path::new("."))
            .join(".ponder-cache"),
    };
    dir.join(format!("ref-{key:016x}.logps"))
}

/// Split the completion-token log-probs `(K,)` into one vector per sequence.
fn completion_values(per_token: &[f32], counts: &[usize]) -> Vec<Vec<f32>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            at += c;
            per_token[at - c..at].to_vec()
        })
        .collect()
}

/// The cached reference sums (chosen, rejected) of the pairs at `idx`, summed as the
/// policy's are (f64 accumulation, an f32 result).
pub(crate) fn cached_sums(c: &RefCache, idx: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let sum32 = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() as f32 as f64;
    idx.iter()
        .map(|&i| {
            let (c_, r_) = c.get(i);
            (sum32(&c_), sum32(&r_))
        })
        .unzip()
}

/// Build (or reuse) the reference cache for `pairs`, computing with `net` when needed.
pub(crate) fn build_cache(
    args: &TrainArgs,
    key: u64,
    pairs: &[Pair],
    ref_net: &dyn Fn() -> Result<Transformer>,
    adapters_off: bool,
    summary: &mut Summary,
) -> Result<RefCache> {
    let path = cache_path(args, key);
    // of several MPI ranks, rank 0 judges the file; then every rank opens it, or every
    // rank computes its share of the pairs and rank 0 writes the whole
    if crate::dist::size() > 1 {
        let hit = crate::dist::root_flag(|| match RefCache::open(&path, key, pairs.len()) {
            Ok(_) => Ok(true),
            Err(Invalid::Foreign(why)) => Err(foreign(&path, &why)),
            Err(_) => Ok(false),
        })?;
        if hit {
            log(format!("reference cache: hit, {}", path.display()));
            return open_written(&path, key, pairs.len(), summary, "hit");
        }
        log(format!(
            "reference cache: computing reference log-probs for {} pairs over {} ranks into {}",
            pairs.len(),
            crate::dist::size(),
            path.display()
        ));
        let mine = reference_values(args, pairs, ref_net, adapters_off, summary, true)?;
        let out = gather_values(&mine, pairs.len())?;
        crate::dist::root_outcome(|| refcache::write(&path, key, &out))?;
        return open_written(&path, key, pairs.len(), summary, "built");
    }
    match RefCache::open(&path, key, pairs.len()) {
        Ok(c) => {
            log(format!("reference cache: hit, {} ({} pairs, {} token log-probs); no reference forward needed", path.display(), c.len(), c.values()));
            summary.cache = Some(format!("hit {}", path.display()));
            return Ok(c);
        }
        Err(Invalid::Missing) => log(format!(
            "reference cache: miss, computing reference log-probs for {} pairs into {}",
            pairs.len(),
            path.display()
        )),
        Err(Invalid::Stale(why)) => log(format!(
            "reference cache {} is stale ({why}); rebuilding",
            path.display()
        )),
        Err(Invalid::Foreign(why)) => return Err(foreign(&path, &why)),
        Err(Invalid::Corrupt(why)) => log(format!(
            "reference cache {} is corrupted ({why}); rebuilding",
            path.display()
        )),
    }
    let out = reference_values(args, pairs, ref_net, adapters_off, summary, false)?;
    refcache::write(&path, key, &out)?;
    open_written(&path, key, pairs.len(), summary, "built")
}

/// A file at the cache's path that ponder did not write.
fn foreign(path: &Path, why: &str) -> Error {
    Error::file(
        path,
        format!("refusing to use this as the reference cache: {why}, so ponder did not write it and will not overwrite it; pass --ref-cache with a new path"),
    )
}

/// The cache at `path` that this run just wrote or found, opened on this rank.
fn open_written(
    path: &Path,
    key: u64,
    pairs: usize,
    summary: &mut Summary,
    how: &str,
) -> Result<RefCache> {
    summary.cache = Some(format!("{how} {}", path.display()));
    RefCache::open(path, key, pairs)
        .map_err(|e| Error::file(path, format!("cache unreadable right after writing: {e:?}")))
}

/// The reference's completion log-probs of `pairs`, in micro-batches of --batch-size;
/// with `sharded`, only this MPI rank's contiguous share of the micro-batches.
fn reference_values(
    args: &TrainArgs,
    pairs: &[Pair],
    ref_net: &dyn Fn() -> Result<Transformer>,
    adapters_off: bool,
    summary: &mut Summary,
    sharded: bool,
) -> Result<RefLogps> {
    let net = ref_net()?;
    let _ng = crate::autograd::NoGradGuard::new();
    let mut out = RefLogps {
        chosen: Vec::new(),
        rejected: Vec::new(),
    };
    let chunks: Vec<&[Pair]> = pairs.chunks(args.batch_size.max(1)).collect();
    let mine = if sharded {
        crate::dist::share(chunks.len())
    } else {
        0..chunks.len()
    };
    let bar = super::report::progress(args, mine.len() as u64, "reference");
    for chunk in &chunks[mine] {
        let seqs: Vec<&Seq> = chunk
            .iter()
            .map(|p| &p.chosen)
            .chain(chunk.iter().map(|p| &p.rejected))
            .collect();
        let lp = loss::sequence_logps(
            &net,
            &seqs,
            LinearCtx {
                disable_adapters: adapters_off,
                dropout_seed: None,
                token_keys: None,
            },
            false,
        )?;
        summary.ref_forwards += 1;
        let vals = completion_values(&lp.per_token.to_vec_f32()?, &lp.counts);
        let n = chunk.len();
        out.chosen.extend(vals[..n].iter().cloned());
        out.rejected.extend(vals[n..].iter().cloned());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Every rank's share of the reference values, concatenated in rank order (so in pair
/// order), on every rank: per pair the chosen then the rejected values, each after its
/// length, as f32 words.
fn gather_values(mine: &RefLogps, pairs: usize) -> Result<RefLogps> {
    let mut words: Vec<f32> = Vec::new();
    for (c, r) in mine.chosen.iter().zip(&mine.rejected) {
        for v in [c, r] {
            words.push(f32::from_bits(v.len() as u32));
            words.extend_from_slice(v);
        }
    }
    let mut out = RefLogps {
        chosen: Vec::with_capacity(pairs),
        rejected: Vec::with_capacity(pairs),
    };
    for b in crate::dist::all_gather_bytes(bytemuck::cast_slice(&words)) {
        let w: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let mut at = 0;
        while at < w.len() {
            let mut take = || {
                let n = w[at].to_bits() as usize;
                let v = w[at + 1..at + 1 + n].to_vec();
                at += 1 + n;
                v
            };
            let c = take();
            let r = take();
            out.chosen.push(c);
            out.rejected.push(r);
        }
    }
    if out.chosen.len() != pairs {
        return Err(Error::invalid(
            "mpi",
            format!(
                "gathered reference values of {} pairs, expected {pairs}",
                out.chosen.len()
            ),
        ));
    }
    Ok(out)
}
