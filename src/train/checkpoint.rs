//! Checkpoints of a training run: trainable weights, optimizer moments and the step
//! counter, written atomically; the settings a resume must share; pruning and clean-up
//! of what a killed run leaves behind.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::args::{Mode, TrainArgs};
use super::optim::Optimizer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn log(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// Trainer state saved beside the weights.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct State {
    /// Optimizer steps done.
    pub(crate) step: usize,
    /// Metrics lines written up to this checkpoint.
    pub(crate) metrics_lines: usize,
    pub(crate) seed: u64,
    /// Randomness is counter-based: (seed, step, micro-batch) fixes every shuffle and
    /// dropout mask, so this step count is the whole RNG state.
    pub(crate) rng: String,
    pub(crate) mode: Mode,
    /// Everything that fixes the trajectory (data, batching, schedule, LoRA, loss); a
    /// resume with different values is refused.
    #[serde(default)]
    pub(crate) fingerprint: Map<String, Value>,
}

/// The settings a resumed run must share with the run that wrote the checkpoint.
pub(crate) fn fingerprint(
    args: &TrainArgs,
    model_hash: u64,
    data_hash: u64,
    total_steps: usize,
    lr: f64,
    warmup: usize,
) -> Map<String, Value> {
    let v = json!({
        "data": format!("{data_hash:016x}"),
        "model": format!("{model_hash:016x}"),
        "batch_size": args.batch_size,
        // micro-batches per optimizer step over all MPI ranks: a run may resume with
        // another rank count and the same trajectory
        "grad_accum": args.grad_accum * crate::dist::size(),
        "shuffle": args.shuffle,
        "total_steps": total_steps,
        "lr": lr,
        "warmup_steps": warmup,
        "lr_scheduler": args.lr_scheduler,
        "min_lr": args.min_lr,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "beta": args.beta,
        "loss_type": args.loss_type,
        "label_smoothing": args.label_smoothing,
        "rpo_alpha": args.rpo_alpha,
        "length_normalize": args.length_normalize,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_targets": args.lora_targets,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub(crate) fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Write checkpoint-N atomically: into a temporary directory, renamed when complete.
pub(crate) fn save_checkpoint(out: &Path, opt: &Optimizer, st: &State) -> Result<PathBuf> {
    let dir = checkpoint_dir(out, st.step);
    let tmp = crate::files::temp_path(&dir);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let weights: Vec<(String, Tensor)> = opt
        .params
        .iter()
        .map(|(n, p)| (n.clone(), p.detach()))
        .collect();
    std::fs::write(
        tmp.join("trainable.safetensors"),
        crate::model::save::safetensors_bytes(&weights, DType::F32)?,
    )
    .map_err(|e| Error::io(&tmp, e))?;
    let mut moments = Vec::new();
    for (i, (n, _)) in opt.params.iter().enumerate() {
        moments.push((format!("m.{n}"), opt.m[i].clone()));
        moments.push((format!("v.{n}"), opt.v[i].clone()));
    }
    std::fs::write(
        tmp.join("optimizer.safetensors"),
        crate::model::save::safetensors_bytes(&moments, DType::F32)?,
    )
    .map_err(|e| Error::io(&tmp, e))?;
    let state = serde_json::to_string_pretty(st)
        .map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    std::fs::write(tmp.join("state.json"), state).map_err(|e| Error::io(&tmp, e))?;
    // make the files durable before the rename publishes the directory
    for f in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
    ] {
        if let Ok(h) = std::fs::File::open(tmp.join(f)) {
            let _ = h.sync_all();
        }
    }
    discard_dir(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    crate::files::failpoint("checkpoint-published");
    // keep the two most recent
    let mut steps = list_checkpoints(out);
    steps.sort();
    while steps.len() > 2 {
        let s = steps.remove(0);
        discard_dir(&checkpoint_dir(out, s));
    }
    Ok(dir)
}

/// Remove a directory so that a kill part-way leaves nothing that looks like a checkpoint:
/// it is renamed to a hidden temporary name first (one atomic step), then deleted; a
/// leftover is removed by [`remove_orphans`] at the next start.
fn discard_dir(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let doomed = crate::files::temp_path(dir);
    match std::fs::rename(dir, &doomed) {
        Ok(()) => {
            crate::files::failpoint("prune-renamed");
            let _ = std::fs::remove_dir_all(&doomed);
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What a killed run can leave in its output directory: hidden temporary checkpoint
/// directories and files (ours by name), and checkpoint-N directories without the
/// state.json that is written before one is published. Called with the output locked.
pub(crate) fn remove_orphans(out: &Path) {
    let Ok(rd) = std::fs::read_dir(out) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let temp_ckpt = name.starts_with(".checkpoint-") && name.ends_with(".tmp");
        let half_ckpt = name
            .strip_prefix("checkpoint-")
            .is_some_and(|n| n.parse::<usize>().is_ok())
            && !path.join("state.json").exists();
        if (temp_ckpt || half_ckpt) && path.is_dir() {
            log(format!(
                "removing {} left by an interrupted run",
                path.display()
            ));
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    crate::files::remove_stale_temps(out);
}

pub(crate) fn list_checkpoints(out: &Path) -> Vec<usize> {
    std::fs::read_dir(out)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("checkpoint-"))
                        .and_then(|s| s.parse().ok())
                })
                .filter(|&s| checkpoint_dir(out, s).join("state.json").exists())
                .collect()
        })
        .unwrap_or_default()
}

/// The checkpoint directory `--resume` names (itself, or the latest inside).
pub(crate) fn resolve_resume(p: &Path) -> Result<PathBuf> {
    if p.join("state.json").exists() {
        return Ok(p.to_path_buf());
    }
    let steps = list_checkpoints(p);
    match steps.iter().max() {
        Some(&s) => Ok(checkpoint_dir(p, s)),
        None => Err(Error::file(
            p,
            "no checkpoint to resume from (expected checkpoint-N directories with state.json)",
        )),
    }
}

pub(crate) fn load_checkpoint(dir: &Path, opt: &mut Optimizer) -> Result<State> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let st: State = serde_json::from_str(&text)
        .map_err(|e| Error::file(&sp, format!("not a ponder checkpoint state: {e}")))?;
    // the step a state claims must be the step its folder was saved at (checkpoint-N)
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|n| n.parse::<usize>().ok());
    if st.step == 0 || named.is_some_and(|n| n != st.step) {
        return Err(Error::file(
            &sp,
            format!(
                "claims step {} but belongs to {}; the checkpoint is damaged",
                st.step,
                dir.display()
            ),
        ));
    }
    let w = crate::model::weights::open_file(&dir.join("trainable.safetensors"))?;
    let o = crate::model::weights::open_file(&dir.join("optimizer.safetensors"))?;
    for (i, (n, p)) in opt.params.iter().enumerate() {
        let missing = |f: &str| {
            Error::file(
                dir.join(f),
                format!(
                    "tensor `{n}` is missing: the checkpoint is for another model or LoRA setup"
                ),
            )
        };
        if !w.contains(n) {
            return Err(missing("trainable.safetensors"));
        }
        let name_it =
            |e: Error, file: &str| Error::file(dir.join(file), format!("tensor `{n}`: {e}"));
        p.assign_(&w.load_any(n)?)
            .map_err(|e| name_it(e, "trainable.safetensors"))?;
        for (key, t) in [(format!("m.{n}"), &opt.m[i]), (format!("v.{n}"), &opt.v[i])] {
            if !o.contains(&key) {
                return Err(missing("optimizer.safetensors"));
            }
            t.assign_(&o.load_any(&key)?)
                .map_err(|e| name_it(e, "optimizer.safetensors"))?;
        }
    }
    opt.step = st.step as u32;
    Ok(st)
}
