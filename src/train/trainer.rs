//! The SFT and DPO trainers: one loop, two losses. The same [`TrainArgs`] come from the
//! command line or from a TOML file (`--config`) that uses the flag names as keys.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::data::{self, Pair, Seq, Truncation, TruncationMode};
use super::loss::{self, DpoBatchStats, DpoParams, LossType};
use super::metrics::{self, MetricsWriter};
use super::optim::{Optimizer, Schedule, Scheduler};
use super::refcache::{self, Invalid, KeyHasher, RefCache, RefLogps};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::transformer::LinearCtx;
use crate::model::{LoadOpts, Model, Transformer};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Sft,
    Dpo,
}

/// Every training option. Field names are the flag names (`--max-grad-norm` =
/// `max_grad_norm`), in the CLI and in a `--config` TOML file alike.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Model directory (Hugging Face layout) to start from.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL training data (TRL formats).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: the trained model or adapter, checkpoints, metrics, plot.
    #[arg(long)]
    pub out: PathBuf,
    /// Reference model for DPO (default: the starting policy).
    #[arg(long)]
    pub ref_model: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub loss_type: LossType,
    /// Label smoothing of the sigmoid and robust losses.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Add rpo_alpha times the NLL of the chosen completions (RPO).
    #[arg(long)]
    pub rpo_alpha: Option<f64>,
    /// Average log-probs over completion tokens instead of summing them.
    #[arg(long)]
    pub length_normalize: bool,
    /// Peak learning rate (default: 1e-6 for dpo, 2e-5 for sft).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Passes over the data (default 1; fractional allowed).
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<f64>,
    /// Optimizer steps (overrides epochs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Examples (sft) or pairs (dpo) per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, value_enum, default_value = "linear")]
    pub lr_scheduler: Scheduler,
    #[arg(long, conflicts_with = "warmup_ratio")]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Floor of cosine_with_min_lr (default 0.1 x lr).
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Bound on prompt + completion tokens.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Keep the last this-many prompt tokens.
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    #[arg(long, value_enum, default_value = "keep-start")]
    pub truncation_mode: TruncationMode,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Shuffle the data each epoch (seeded); off by default, so batches keep file order.
    #[arg(long)]
    pub shuffle: bool,
    /// Metrics JSONL (default OUT/metrics.jsonl).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Write a checkpoint every N optimizer steps (0: only the final model).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Continue from a checkpoint (a checkpoint-N directory, or an output directory,
    /// whose latest checkpoint is used).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// LoRA rank (enables LoRA; the base stays frozen, possibly 16-bit).
    #[arg(long)]
    pub lora_r: Option<usize>,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f32,
    /// Comma-separated projections: q,k,v,o,gate,up,down.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o")]
    pub lora_targets: Vec<String>,
    /// Save the base with the adapters merged in, instead of a PEFT adapter.
    #[arg(long)]
    pub merge_lora: bool,
    /// Compute the reference on the fly instead of caching its log-probs.
    #[arg(long)]
    pub no_ref_cache: bool,
    /// Reference cache file (default: $PONDER_CACHE_DIR or DATA_DIR/.ponder-cache, named by key).
    #[arg(long)]
    pub ref_cache: Option<PathBuf>,
    /// cpu, gpu or auto (default $PONDER_DEVICE, else auto).
    #[arg(long)]
    pub device: Option<String>,
    /// Dtype of the saved weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub save_dtype: SaveDType,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveDType {
    F32,
    F16,
    Bf16,
}

impl TrainArgs {
    /// Parse the same flags `ponder sft|dpo` takes (clap holds the one set of defaults).
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<TrainArgs> {
        use clap::{Args, FromArgMatches};
        let cmd = TrainArgs::augment_args(clap::Command::new("train").no_binary_name(true));
        let m = cmd
            .try_get_matches_from(flags.iter().map(|f| f.as_ref()))
            .map_err(|e| Error::invalid("train", e.to_string()))?;
        TrainArgs::from_arg_matches(&m).map_err(|e| Error::invalid("train", e.to_string()))
    }
}

impl SaveDType {
    pub fn dtype(self) -> DType {
        match self {
            SaveDType::F32 => DType::F32,
            SaveDType::F16 => DType::F16,
            SaveDType::Bf16 => DType::BF16,
        }
    }
}

/// What a finished run reports.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: usize,
    pub final_loss: f64,
    /// Reference forward passes run (0 after a cache hit).
    pub ref_forwards: usize,
    pub cache: Option<String>,
    pub out: PathBuf,
}

/// The training examples of either mode.
enum Examples {
    Sft(Vec<Seq>),
    Dpo(Vec<Pair>),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Sft(v) => v.len(),
            Examples::Dpo(v) => v.len(),
        }
    }
}

/// The reference side of DPO.
enum Reference {
    Cache(RefCache),
    /// Separate frozen model, on the fly.
    Model(Box<Transformer>),
    /// The policy itself with its adapters off (LoRA), on the fly.
    Adapters,
}

/// Run messages go to stderr (the progress bar, hidden by --quiet, draws there too).
fn log(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// Micro-batches of one epoch: indices into the examples, in order or shuffled.
fn epoch_batches(n: usize, bs: usize, shuffle: bool, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    if shuffle {
        use rand::seq::SliceRandom;
        idx.shuffle(&mut crate::util::rng(
            seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
        ));
    }
    idx.chunks(bs.max(1)).map(|c| c.to_vec()).collect()
}

/// Where the reference cache of this run lives.
fn cache_path(args: &TrainArgs, key: u64) -> PathBuf {
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

/// Reference log-prob sums (chosen, rejected) of a batch of pairs, on the fly.
fn reference_sums(
    net: &Transformer,
    pairs: &[&Pair],
    adapters_off: bool,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let _ng = crate::autograd::NoGradGuard::new();
    let seqs: Vec<&Seq> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    let lp = loss::sequence_logps(
        net,
        &seqs,
        LinearCtx {
            disable_adapters: adapters_off,
            dropout_seed: None,
        },
        false,
    )?;
    let s = lp.sum.to_vec_f64()?;
    let n = pairs.len();
    Ok((s[..n].to_vec(), s[n..].to_vec()))
}

/// Build (or reuse) the reference cache for `pairs`, computing with `net` when needed.
fn build_cache(
    args: &TrainArgs,
    key: u64,
    pairs: &[Pair],
    ref_net: &dyn Fn() -> Result<Transformer>,
    adapters_off: bool,
    summary: &mut Summary,
) -> Result<RefCache> {
    let path = cache_path(args, key);
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
        Err(Invalid::Foreign(why)) => {
            return Err(Error::file(
                &path,
                format!("refusing to use this as the reference cache: {why}, so ponder did not write it and will not overwrite it; pass --ref-cache with a new path"),
            ))
        }
        Err(Invalid::Corrupt(why)) => log(format!(
            "reference cache {} is corrupted ({why}); rebuilding",
            path.display()
        )),
    }
    let net = ref_net()?;
    let _ng = crate::autograd::NoGradGuard::new();
    let mut out = RefLogps {
        chosen: Vec::new(),
        rejected: Vec::new(),
    };
    let bar = progress(
        args,
        (pairs.len().div_ceil(args.batch_size.max(1))) as u64,
        "reference",
    );
    for chunk in pairs.chunks(args.batch_size.max(1)) {
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
    refcache::write(&path, key, &out)?;
    summary.cache = Some(format!("built {}", path.display()));
    RefCache::open(&path, key, pairs.len()).map_err(|e| {
        Error::file(
            &path,
            format!("cache unreadable right after writing: {e:?}"),
        )
    })
}

fn progress(args: &TrainArgs, len: u64, what: &str) -> indicatif::ProgressBar {
    if args.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

/// `PONDER_TEST_STEP_DELAY_MS`: sleep this long in every step. Only for tests that kill a
/// running job at an arbitrary point and resume it.
fn step_delay() -> Option<u64> {
    std::env::var("PONDER_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

// ------------------------------------------------------------------ checkpoints

/// Trainer state saved beside the weights.
#[derive(Serialize, Deserialize, Debug)]
struct State {
    /// Optimizer steps done.
    step: usize,
    /// Metrics lines written up to this checkpoint.
    metrics_lines: usize,
    seed: u64,
    /// Randomness is counter-based: (seed, step, micro-batch) fixes every shuffle and
    /// dropout mask, so this step count is the whole RNG state.
    rng: String,
    mode: Mode,
    /// Everything that fixes the trajectory (data, batching, schedule, LoRA, loss); a
    /// resume with different values is refused.
    #[serde(default)]
    fingerprint: Map<String, Value>,
}

/// The settings a resumed run must share with the run that wrote the checkpoint.
fn fingerprint(
    args: &TrainArgs,
    data_hash: u64,
    total_steps: usize,
    lr: f64,
    warmup: usize,
) -> Map<String, Value> {
    let v = json!({
        "data": format!("{data_hash:016x}"),
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
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

fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Write checkpoint-N atomically: into a temporary directory, renamed when complete.
fn save_checkpoint(out: &Path, opt: &Optimizer, st: &State) -> Result<PathBuf> {
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
fn remove_orphans(out: &Path) {
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

fn list_checkpoints(out: &Path) -> Vec<usize> {
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
fn resolve_resume(p: &Path) -> Result<PathBuf> {
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

fn load_checkpoint(dir: &Path, opt: &mut Optimizer) -> Result<State> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let st: State = serde_json::from_str(&text)
        .map_err(|e| Error::file(&sp, format!("not a ponder checkpoint state: {e}")))?;
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
        p.assign_(&w.load_any(n)?)?;
        for (key, t) in [(format!("m.{n}"), &opt.m[i]), (format!("v.{n}"), &opt.v[i])] {
            if !o.contains(&key) {
                return Err(missing("optimizer.safetensors"));
            }
            t.assign_(&o.load_any(&key)?)?;
        }
    }
    opt.step = st.step as u32;
    Ok(st)
}

// ------------------------------------------------------------------ the loop

/// Run SFT or DPO as `args` say.
pub fn train(mode: Mode, args: &TrainArgs) -> Result<Summary> {
    let device = match &args.device {
        Some(d) => Device::parse(d),
        None => Device::from_env(),
    }?;
    let lora = args.lora_r.is_some();
    // the trainable policy: f32 leaves, or a frozen (16-bit kept) base with f32 adapters
    let mut m = Model::load(
        &args.model,
        LoadOpts {
            device,
            keep_16bit: lora,
            trainable: !lora,
        },
    )?;
    if let Some(r) = args.lora_r {
        m.net.add_lora(
            &args.lora_targets,
            r,
            args.lora_alpha,
            args.lora_dropout,
            args.seed,
        )?;
    }
    let tok = m.tokenizer()?;
    let trunc = Truncation {
        max_prompt_length: args.max_prompt_length,
        max_length: args.max_length,
        mode: args.truncation_mode,
    };
    let (examples, stats) = match mode {
        Mode::Sft => {
            let (v, s) = data::load_sft(&args.data, tok, &trunc)?;
            (Examples::Sft(v), s)
        }
        Mode::Dpo => {
            let (v, s) = data::load_pairs(&args.data, tok, &trunc)?;
            (Examples::Dpo(v), s)
        }
    };
    log(format!("data {}: {stats}", args.data.display()));
    let data_hash = {
        let mut h = KeyHasher::default();
        match &examples {
            Examples::Sft(v) => h.seqs(v),
            Examples::Dpo(v) => h.pairs(v),
        };
        h.finish()
    };
    let n = examples.len();
    let bs = args.batch_size.max(1);
    let ga = args.grad_accum.max(1);
    let mb_per_epoch = n.div_ceil(bs);
    let steps_per_epoch = mb_per_epoch.div_ceil(ga).max(1);
    let total_steps = match args.steps {
        Some(s) => s,
        None => ((args.epochs.unwrap_or(1.0) * steps_per_epoch as f64).ceil() as usize).max(1),
    };
    let lr = args
        .lr
        .unwrap_or(if mode == Mode::Dpo { 1e-6 } else { 2e-5 });
    let warmup = match (args.warmup_steps, args.warmup_ratio) {
        (Some(w), _) => w,
        (None, Some(r)) => (r * total_steps as f64).ceil() as usize,
        (None, None) => 0,
    };
    let schedule = Schedule {
        kind: args.lr_scheduler,
        lr,
        warmup_steps: warmup,
        total_steps,
        min_lr: args.min_lr.unwrap_or(0.1 * lr),
    };
    let params = if lora {
        m.net.lora_parameters()
    } else {
        m.net.named_parameters()
    };
    let trainable: usize = params.iter().map(|(_, p)| p.numel()).sum();
    log(format!("{:?} on {device}: {} parameters, {trainable} trainable{}; {total_steps} steps of {ga} x {bs}", mode, m.net.num_parameters(), if lora { " (LoRA)" } else { "" }));
    let mut opt = Optimizer::new(params, args.weight_decay as f32)?;
    let mut summary = Summary {
        out: args.out.clone(),
        ..Default::default()
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    // one run at a time per output directory; the OS drops the lock if this process dies
    let _lock = crate::files::DirLock::acquire(&args.out)?;
    remove_orphans(&args.out);

    // reference for DPO
    let dpo = DpoParams {
        beta: args.beta,
        loss_type: args.loss_type,
        label_smoothing: args.label_smoothing,
        rpo_alpha: args.rpo_alpha,
        length_normalize: args.length_normalize,
    };
    if args.loss_type == LossType::Robust && !(0.0..0.5).contains(&args.label_smoothing) {
        return Err(Error::invalid(
            "dpo",
            "the robust loss needs 0 <= label_smoothing < 0.5",
        ));
    }
    let reference = match &examples {
        Examples::Sft(_) => None,
        Examples::Dpo(pairs) => {
            let ref_dir = args.ref_model.clone().unwrap_or_else(|| args.model.clone());
            let frozen = |dir: &Path| -> Result<Transformer> {
                Ok(Model::load(
                    dir,
                    LoadOpts {
                        device,
                        keep_16bit: true,
                        trainable: false,
                    },
                )?
                .net)
            };
            if args.no_ref_cache {
                log("reference: computed on the fly (--no-ref-cache)");
                Some(match (&args.ref_model, lora) {
                    (None, true) => Reference::Adapters,
                    _ => Reference::Model(Box::new(frozen(&ref_dir)?)),
                })
            } else {
                let mut key = KeyHasher::default();
                key.model_dir(&ref_dir)?;
                key.file(&args.model.join("tokenizer.json"))?;
                key.pairs(pairs);
                key.bytes(format!("{trunc:?}").as_bytes());
                let key = key.finish();
                let cache = if args.ref_model.is_none() {
                    // the starting policy is the reference: compute with it before training
                    // (adapters are zero-initialised, so the LoRA policy equals its base)
                    let net = m.net.clone();
                    build_cache(
                        args,
                        key,
                        pairs,
                        &move || Ok(net.clone()),
                        true,
                        &mut summary,
                    )?
                } else {
                    build_cache(args, key, pairs, &|| frozen(&ref_dir), true, &mut summary)?
                };
                Some(Reference::Cache(cache))
            }
        }
    };

    // resume
    let metrics_path = args
        .metrics
        .clone()
        .unwrap_or_else(|| args.out.join("metrics.jsonl"));
    let mut start_step = 0;
    let mut keep_lines = 0;
    if let Some(r) = &args.resume {
        let dir = resolve_resume(r)?;
        let st = load_checkpoint(&dir, &mut opt)?;
        if st.mode != mode {
            return Err(Error::file(
                &dir,
                format!("checkpoint is from a {:?} run, not {:?}", st.mode, mode),
            ));
        }
        if st.seed != args.seed {
            return Err(Error::file(
                &dir,
                format!("checkpoint used --seed {}, this run {}", st.seed, args.seed),
            ));
        }
        let now = fingerprint(args, data_hash, total_steps, lr, warmup);
        let differ: Vec<String> = now
            .iter()
            .filter(|(k, v)| st.fingerprint.get(*k).is_some_and(|old| old != *v))
            .map(|(k, v)| format!("{k}: checkpoint {} vs now {v}", st.fingerprint[k]))
            .collect();
        if !differ.is_empty() {
            return Err(Error::file(&dir, format!("this run's settings differ from the checkpoint's, so resuming would change the trajectory ({})", differ.join("; "))));
        }
        start_step = st.step;
        keep_lines = st.metrics_lines;
        log(format!(
            "resumed from {} at step {start_step}",
            dir.display()
        ));
    }
    if args.resume.is_none() {
        if let Some(&old) = list_checkpoints(&args.out).iter().max() {
            return Err(Error::file(
                &args.out,
                format!("already holds checkpoints of an earlier run (checkpoint-{old}); pass --resume {} to continue it, or choose another --out", args.out.display()),
            ));
        }
    }
    let mut mw = MetricsWriter::open(&metrics_path, keep_lines)?;

    // micro-batch stream (per epoch, counter-based shuffles); one epoch's order is built
    // once and kept until the stream moves past it
    let mut epoch_cache: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut mb_at = |k: usize| -> Vec<usize> {
        let (epoch, i) = (k / mb_per_epoch, k % mb_per_epoch);
        if epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            epoch_cache = Some((epoch, epoch_batches(n, bs, args.shuffle, args.seed, epoch)));
        }
        epoch_cache.as_ref().unwrap().1[i].clone()
    };
    let bar = progress(
        args,
        total_steps as u64,
        &format!("{mode:?}").to_lowercase(),
    );
    bar.set_position(start_step as u64);
    let mut last_loss = f64::NAN;
    for step in start_step..total_steps {
        let t0 = Instant::now();
        let batches: Vec<Vec<usize>> = (step * ga..(step + 1) * ga).map(&mut mb_at).collect();
        let items: usize = batches.iter().map(|b| b.len()).sum();
        let mut loss_sum = 0.0;
        let mut tokens = 0usize;
        let mut dstats = DpoBatchStats::default();
        let sft_denom: usize = match &examples {
            Examples::Sft(v) => batches
                .iter()
                .flatten()
                .map(|&i| v[i].completion_len())
                .sum(),
            Examples::Dpo(_) => 0,
        };
        for (mbi, b) in batches.iter().enumerate() {
            let linear = LinearCtx {
                disable_adapters: false,
                dropout_seed: Some(
                    args.seed ^ ((step * ga + mbi) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
                ),
            };
            match (&examples, &reference) {
                (Examples::Sft(v), _) => {
                    let seqs: Vec<&Seq> = b.iter().map(|&i| &v[i]).collect();
                    tokens += seqs.iter().map(|s| s.ids.len()).sum::<usize>();
                    let lp = loss::sequence_logps(&m.net, &seqs, linear, false)?;
                    let l = loss::sft_loss(&lp, sft_denom)?;
                    loss_sum += l.item()? as f64;
                    l.backward()?;
                }
                (Examples::Dpo(pairs), Some(reference)) => {
                    let ps: Vec<&Pair> = b.iter().map(|&i| &pairs[i]).collect();
                    let (rc, rr) = match reference {
                        Reference::Cache(c) => {
                            let mut rc = Vec::new();
                            let mut rr = Vec::new();
                            // summed as the policy's sums are (f64 accumulation, an f32 result)
                            let sum32 =
                                |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() as f32 as f64;
                            for &i in b {
                                let (c_, r_) = c.get(i);
                                rc.push(sum32(&c_));
                                rr.push(sum32(&r_));
                            }
                            (rc, rr)
                        }
                        Reference::Model(net) => {
                            summary.ref_forwards += 1;
                            reference_sums(net, &ps, true)?
                        }
                        Reference::Adapters => {
                            summary.ref_forwards += 1;
                            reference_sums(&m.net, &ps, true)?
                        }
                    };
                    let seqs: Vec<&Seq> = ps
                        .iter()
                        .map(|p| &p.chosen)
                        .chain(ps.iter().map(|p| &p.rejected))
                        .collect();
                    tokens += seqs.iter().map(|s| s.ids.len()).sum::<usize>();
                    let lp = loss::sequence_logps(&m.net, &seqs, linear, true)?;
                    let (l, st) = loss::dpo_loss(&lp, &rc, &rr, &dpo)?;
                    let w = b.len() as f64 / items as f64;
                    let l = l.scale(w)?;
                    loss_sum += l.item()? as f64;
                    l.backward()?;
                    dstats.chosen_rewards.extend(st.chosen_rewards);
                    dstats.rejected_rewards.extend(st.rejected_rewards);
                    dstats.logps_chosen.extend(st.logps_chosen);
                    dstats.logps_rejected.extend(st.logps_rejected);
                    dstats.logits_chosen.0 += st.logits_chosen.0;
                    dstats.logits_chosen.1 += st.logits_chosen.1;
                    dstats.logits_rejected.0 += st.logits_rejected.0;
                    dstats.logits_rejected.1 += st.logits_rejected.1;
                }
                (Examples::Dpo(_), None) => unreachable!("dpo always has a reference"),
            }
        }
        if let Some(ms) = step_delay() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let grad_norm = opt.grad_norm()?;
        if !grad_norm.is_finite() {
            return Err(Error::invalid(
                "train",
                format!(
                    "step {}: gradient norm is {grad_norm} (loss {loss_sum}); lower --lr?",
                    step + 1
                ),
            ));
        }
        opt.clip(grad_norm, args.max_grad_norm)?;
        let lr_now = schedule.lr_at(step);
        opt.step(lr_now)?;
        let secs = t0.elapsed().as_secs_f64();
        last_loss = loss_sum;
        let mut row = Map::new();
        row.insert("step".into(), json!(step + 1));
        row.insert(
            "epoch".into(),
            json!(((step + 1) * ga) as f64 / mb_per_epoch as f64),
        );
        row.insert("loss".into(), json!(loss_sum));
        row.insert("grad_norm".into(), json!(grad_norm));
        row.insert("learning_rate".into(), json!(lr_now));
        let mut msg = format!("loss {loss_sum:.4}");
        if mode == Mode::Dpo {
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            let (c, r) = (&dstats.chosen_rewards, &dstats.rejected_rewards);
            let margins: Vec<f64> = c.iter().zip(r).map(|(a, b)| a - b).collect();
            let acc: Vec<f64> = c.iter().zip(r).map(|(a, b)| (a > b) as u8 as f64).collect();
            row.insert("rewards/chosen".into(), json!(mean(c)));
            row.insert("rewards/rejected".into(), json!(mean(r)));
            row.insert("rewards/margins".into(), json!(mean(&margins)));
            row.insert("rewards/accuracies".into(), json!(mean(&acc)));
            row.insert("logps/chosen".into(), json!(mean(&dstats.logps_chosen)));
            row.insert("logps/rejected".into(), json!(mean(&dstats.logps_rejected)));
            row.insert(
                "logits/chosen".into(),
                json!(dstats.logits_chosen.0 / dstats.logits_chosen.1.max(1) as f64),
            );
            row.insert(
                "logits/rejected".into(),
                json!(dstats.logits_rejected.0 / dstats.logits_rejected.1.max(1) as f64),
            );
            msg = format!("{msg} margin {:.4} acc {:.2}", mean(&margins), mean(&acc));
        }
        row.insert(
            "tokens_per_second".into(),
            json!(tokens as f64 / secs.max(1e-9)),
        );
        mw.write(&row)?;
        bar.set_message(msg);
        bar.inc(1);
        if args.save_every > 0 && (step + 1) % args.save_every == 0 && step + 1 < total_steps {
            let st = State {
                step: step + 1,
                metrics_lines: mw.lines,
                seed: args.seed,
                rng: "counter-based (seed, step, micro-batch)".into(),
                mode,
                fingerprint: fingerprint(args, data_hash, total_steps, lr, warmup),
            };
            save_checkpoint(&args.out, &opt, &st)?;
        }
    }
    bar.finish_and_clear();
    summary.steps = total_steps;
    summary.final_loss = last_loss;

    // the trained model, or the adapter
    if lora && !args.merge_lora {
        save_adapter(&m.net, args)?;
        log(format!(
            "saved LoRA adapter (PEFT format) to {}",
            args.out.display()
        ));
    } else {
        if lora {
            m.net.merge_lora()?;
        }
        crate::model::save::save_model(
            &m.net,
            Some(&args.model),
            &args.out,
            args.save_dtype.dtype(),
        )?;
        log(format!("saved model to {}", args.out.display()));
    }
    let rows = metrics::read(&metrics_path)?;
    let keys: &[&str] = if mode == Mode::Dpo {
        &["loss", "rewards/margins", "rewards/accuracies"]
    } else {
        &["loss", "grad_norm"]
    };
    let plot_path = metrics_path.with_extension("svg");
    metrics::plot(&rows, keys, &plot_path)?;
    log(format!(
        "metrics: {} ({} steps), plot: {}",
        metrics_path.display(),
        rows.len(),
        plot_path.display()
    ));
    Ok(summary)
}

/// PEFT's adapter format: adapter_model.safetensors + adapter_config.json.
fn save_adapter(net: &Transformer, args: &TrainArgs) -> Result<()> {
    let params = net.lora_parameters();
    crate::files::write_atomic(
        &args.out.join("adapter_model.safetensors"),
        &crate::model::save::safetensors_bytes(&params, args.save_dtype.dtype())?,
    )?;
    let targets = crate::model::transformer::lora_target_names(&args.lora_targets);
    let cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone()).display().to_string(),
        "r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": Value::Null,
        "use_rslora": false,
        "use_dora": false,
    });
    crate::files::write_atomic(
        &args.out.join("adapter_config.json"),
        serde_json::to_string_pretty(&cfg)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    // the tokenizer travels with the adapter, as PEFT users expect
    for f in crate::model::save::TOKENIZER_FILES {
        let p = args.model.join(f);
        if p.exists() {
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            crate::files::write_atomic(&args.out.join(f), &bytes)?;
        }
    }
    Ok(())
}

/// Expand `--config FILE.toml` into flags placed before the command line's own (so flags
/// given on the command line win).
pub fn config_to_args(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| Error::file(path, format!("not valid TOML: {e}")))?;
    let mut out = Vec::new();
    for (k, v) in table {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.push(format!("{flag}={s}")),
            toml::Value::Integer(i) => out.push(format!("{flag}={i}")),
            toml::Value::Float(f) => out.push(format!("{flag}={f}")),
            toml::Value::Array(a) => {
                let items: Vec<String> = a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect();
                out.push(format!("{flag}={}", items.join(",")));
            }
            other => {
                return Err(Error::file(
                    path,
                    format!("key `{k}`: unsupported value {other}"),
                ))
            }
        }
    }
    Ok(out)
}
