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
    /// Held by rank 0 (alone, of several MPI ranks).
    _lock: Option<DirLock>,
    rows: Vec<Map<String, Value>>,
    /// Round 0, the evaluated starting model (`start.json`), when known.
    start: Option<Map<String, Value>>,
    /// What the report calls the run: (command, title, settings).
    about: Option<(String, String, String)>,
}

impl RunDir {
    /// Open (and lock) `out` as `command`'s output (new, empty, or made by the same
    /// command: see [`crate::files::claim_out_dir`]). With `resume`, the rounds already in
    /// rounds.jsonl are kept; without, an `out` that already holds rounds is an error
    /// (nothing is overwritten). Temporary files of a killed run are removed.
    pub fn open(out: &Path, command: &str, resume: bool) -> Result<RunDir> {
        // of several MPI ranks, rank 0 alone claims and writes `out`; the others read it
        let lock = crate::dist::root_outcome(|| {
            let lock = crate::files::claim_out_dir(out, command)?;
            crate::files::remove_stale_temps_below(out, 3);
            Ok(lock)
        })?;
        // rounds are written only into ponder's own folders, never through a link
        for e in std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("round-") && e.file_type().is_ok_and(|t| t.is_symlink()) {
                return Err(Error::file(
                    e.path(),
                    "is a symbolic link; ponder writes rounds only into folders it made",
                ));
            }
        }
        let path = out.join("rounds.jsonl");
        let rows = if path.exists() {
            crate::train::metrics::read(&path)?
        } else {
            Vec::new()
        };
        if !rows.is_empty() && !resume {
            return Err(Error::file(
                out,
                format!(
                    "already holds {} finished round(s) of `ponder {command}`; {}",
                    rows.len(),
                    if command == "thinkpo" {
                        "thinkpo runs in one step and does not resume: choose another --out"
                    } else {
                        "pass --resume to continue, or choose another --out"
                    }
                ),
            ));
        }
        Ok(RunDir {
            out: out.to_path_buf(),
            _lock: lock,
            start: read_start(out, &rows)?,
            rows,
            about: None,
        })
    }

    /// Round 0, the evaluated starting model, when known: recorded by this run, or on
    /// resume by the run it continues.
    pub fn start(&self) -> Option<&Map<String, Value>> {
        self.start.as_ref()
    }

    /// Record round 0, the starting model's evaluation (`start.json`): drawn first in the
    /// plot and the report.
    pub fn record_start(&mut self, row: Map<String, Value>) -> Result<()> {
        let mut m = Map::new();
        m.insert("round".into(), Value::from(0));
        m.insert("step".into(), Value::from(0));
        m.extend(row.into_iter().filter(|(k, _)| k != "round" && k != "step"));
        let text =
            serde_json::to_string(&m).map_err(|e| Error::invalid("start.json", e.to_string()))?;
        if crate::dist::is_root() {
            crate::files::write_atomic(&self.out.join(START_FILE), text.as_bytes())?;
        }
        self.start = Some(m);
        Ok(())
    }

    /// What the report (`report.html`, rewritten with each round) names the run, and the
    /// settings it shows.
    pub fn describe(&mut self, command: &str, title: &str, settings: &dyn std::fmt::Debug) {
        self.about = Some((command.into(), title.into(), format!("{settings:#?}")));
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
        if !crate::dist::is_root() {
            return Ok(());
        }
        let rows: Vec<Value> = self.rows.iter().cloned().map(Value::Object).collect();
        super::data::write_jsonl(&self.out.join("rounds.jsonl"), &rows)?;
        // round 0 first, so the plot and the report show the change the recipe made
        let all: Vec<Map<String, Value>> = self.start.iter().chain(&self.rows).cloned().collect();
        let svg = crate::train::metrics::rounds_svg(&all, plot_keys);
        if let Some(svg) = &svg {
            crate::files::write_atomic(&self.out.join("rounds.svg"), svg.as_bytes())?;
        }
        if let Some((command, title, settings)) = &self.about {
            super::report::write_run(
                &self.out,
                &super::report::RunReport {
                    recipe: command,
                    title,
                    settings,
                    rows: &all,
                    svg: svg.as_deref(),
                },
            )?;
        }
        Ok(())
    }
}

/// Where a run keeps its round 0.
const START_FILE: &str = "start.json";

/// The round 0 a resumed run recorded (none for a fresh run: it evaluates its own).
fn read_start(out: &Path, rows: &[Map<String, Value>]) -> Result<Option<Map<String, Value>>> {
    let path = out.join(START_FILE);
    if rows.is_empty() || std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let text = crate::files::read_text_bounded(&path, 1 << 20, "start.json (round 0)")?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Ok(Some(o)),
        _ => Err(Error::file(
            &path,
            "not a JSON object: not the round 0 ponder records; move it aside to resume",
        )),
    }
}

/// Round 0's row from the starting model's evaluation.
pub fn start_row(r: &Report) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("accuracy".into(), Value::from(r.accuracy));
    m.insert(
        "mean_tokens".into(),
        Value::from(r.mean_tokens.unwrap_or(0.0)),
    );
    m
}

/// A recipe's `--rounds`: at least one (with none, there is no model to report).
pub fn check_rounds(what: &'static str, rounds: usize) -> Result<()> {
    if !(1..=1000).contains(&rounds) {
        return Err(crate::train::fit::range_error(
            what, "rounds", rounds, "1..=1000",
        ));
    }
    Ok(())
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
    // of several MPI ranks, rank 0 alone writes (they all hold the same weights)
    if !crate::dist::is_root() {
        return Ok(());
    }
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
    if crate::dist::is_root() {
        eprintln!("{msg}");
    }
}
