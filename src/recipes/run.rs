//! What every recipe shares: its output directory (locked while it runs), one row per
//! finished round in `rounds.jsonl` (rewritten atomically), a plot of those rows, loading
//! models for training and evaluation, and saving each round's model.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::data::Example;
use super::eval::{evaluate, EvalOpts, Report};
use crate::error::{Error, Result};
use crate::files::DirLock;
use crate::model::{LoadOpts, Model, Tok, Transformer};
use crate::tensor::Device;

/// A recipe's output directory.
pub struct RunDir {
    pub out: PathBuf,
    _lock: DirLock,
    rows: Vec<Map<String, Value>>,
}

impl RunDir {
    /// Open (and lock) `out`. With `resume`, the rounds already in rounds.jsonl are kept;
    /// without, an `out` that already holds rounds is an error (nothing is overwritten).
    pub fn open(out: &Path, resume: bool) -> Result<RunDir> {
        let lock = DirLock::acquire(out)?;
        let path = out.join("rounds.jsonl");
        let rows = if path.exists() {
            crate::train::metrics::read(&path)?
        } else {
            Vec::new()
        };
        if !rows.is_empty() && !resume {
            return Err(Error::file(
                out,
                format!("already holds {} finished round(s); pass --resume to continue, or choose another --out", rows.len()),
            ));
        }
        Ok(RunDir {
            out: out.to_path_buf(),
            _lock: lock,
            rows,
        })
    }

    /// Rounds finished so far.
    pub fn rows(&self) -> &[Map<String, Value>] {
        &self.rows
    }

    pub fn round_dir(&self, round: usize) -> PathBuf {
        self.out.join(format!("round-{round}"))
    }

    /// Record a finished round (rounds.jsonl rewritten whole, atomically) and redraw the plot.
    pub fn finish_round(&mut self, row: Map<String, Value>, plot_keys: &[&str]) -> Result<()> {
        self.rows.push(row);
        let rows: Vec<Value> = self.rows.iter().cloned().map(Value::Object).collect();
        super::data::write_jsonl(&self.out.join("rounds.jsonl"), &rows)?;
        crate::train::metrics::plot(&self.rows, plot_keys, &self.out.join("rounds.svg"))
    }
}

/// Question/answer lines from `path` (none when absent), the first `limit` of them.
pub fn read_limited(path: Option<&Path>, limit: Option<usize>) -> Result<Vec<Example>> {
    let mut v = match path {
        Some(p) => super::data::read_examples(p)?,
        None => Vec::new(),
    };
    if let Some(n) = limit {
        v.truncate(n);
    }
    Ok(v)
}

/// Load a model directory's weights as trainable f32 on `device`.
pub fn load_trainable(dir: &Path, device: Device) -> Result<(Transformer, Tok)> {
    let m = Model::load(
        dir,
        LoadOpts {
            device,
            keep_16bit: false,
            trainable: true,
        },
    )?;
    let Model { net, tok, .. } = m;
    let tok = tok.ok_or_else(|| {
        Error::file(
            dir.join("tokenizer.json"),
            "missing: a recipe needs the model's tokenizer",
        )
    })?;
    Ok((net, tok))
}

/// Save `net` as a model directory beside the tokenizer files of `tok_dir`.
pub fn save(net: &Transformer, tok_dir: &Path, out: &Path) -> Result<()> {
    crate::model::save::save_model(net, Some(tok_dir), out, crate::dtype::DType::F32)
}

/// Greedy evaluation on held-out questions (no gradient is recorded).
pub fn eval(
    net: &Transformer,
    tok: &Tok,
    test: &[Example],
    calculator: bool,
    max_new_tokens: usize,
    quiet: bool,
    label: &str,
) -> Result<Report> {
    let _ng = crate::autograd::NoGradGuard::new();
    let opts = EvalOpts {
        calculator,
        max_new_tokens,
        ..Default::default()
    };
    let bar = crate::util::progress_bar(test.len() as u64, label, quiet);
    let (r, _) = evaluate(net, tok, test, &opts, &mut |d| bar.set_position(d as u64))?;
    bar.finish_and_clear();
    Ok(r)
}

/// Log a line to stderr (progress bars draw there too).
pub fn log(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}
