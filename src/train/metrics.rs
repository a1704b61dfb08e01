//! Per-step metrics as JSONL with TRL's names, and the plot written at the end.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Appends one JSON object per optimizer step; flushed every line so a killed run keeps
/// what it logged.
pub struct MetricsWriter {
    file: std::fs::File,
    path: std::path::PathBuf,
    pub lines: usize,
}

impl MetricsWriter {
    /// Open `path` keeping its first `keep` lines (a resumed run drops lines logged after
    /// the checkpoint it resumes from).
    pub fn open(path: &Path, keep: usize) -> Result<MetricsWriter> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        crate::files::check_replaceable(path)?;
        let old = match std::fs::read(path) {
            Ok(b) => String::from_utf8(b).map_err(|_| {
                Error::file(
                    path,
                    "not a ponder metrics file (not UTF-8); ponder will not overwrite it",
                )
            })?,
            Err(_) => String::new(),
        };
        let lines: Vec<&str> = old.lines().filter(|l| !l.trim().is_empty()).collect();
        // only a file of JSON objects, one per line, is ours to rewrite
        if let Some(i) = lines
            .iter()
            .position(|l| !serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()))
        {
            return Err(Error::file(
                path,
                format!("line {} is not a JSON object: not a ponder metrics file, and ponder will not overwrite it; choose another --metrics or --out", i + 1),
            ));
        }
        let kept = &lines[..keep.min(lines.len())];
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        // the history survives a kill here: the old file stays until the new one is complete
        if text != old || !path.exists() {
            crate::files::write_atomic(path, text.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsWriter {
            file,
            path: path.to_path_buf(),
            lines: kept.len(),
        })
    }

    pub fn write(&mut self, m: &Map<String, Value>) -> Result<()> {
        let line =
            serde_json::to_string(m).map_err(|e| Error::invalid("metrics", e.to_string()))?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }
}

/// Read back a metrics file.
pub fn read(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => Ok(o),
            _ => Err(Error::file(
                path,
                format!("line {}: not a JSON object", i + 1),
            )),
        })
        .collect()
}

/// What a chart calls a metric: (title, y axis name).
fn describe(key: &str) -> (String, String) {
    let (t, y) = match key {
        "accuracy" => ("Held-out accuracy", "accuracy"),
        "val_accuracy" => ("Validation accuracy", "accuracy"),
        "mean_tokens" => ("Mean completion length, held-out questions", "tokens"),
        "positives" => ("SFT positives so far", "sequences"),
        "new_positives" => ("New SFT positives", "sequences"),
        "judge_score" => ("Mean judge score of the sampled responses", "score"),
        "mean_chosen_length" => ("Chosen response length", "tokens"),
        "mean_rejected_length" => ("Rejected response length", "tokens"),
        "mean_chosen_length|mean_rejected_length" => {
            ("Mean response length of the pairs", "tokens")
        }
        "pairs" | "dpo_pairs" => ("Preference pairs", "pairs"),
        "loss" => ("Loss", "loss"),
        "grad_norm" => ("Gradient norm (before clipping)", "norm"),
        "rewards/margins" => ("Reward margin, chosen - rejected", "margin"),
        "rewards/accuracies" => ("Reward accuracy", "share of pairs"),
        k => (k, k),
    };
    (t.to_string(), y.to_string())
}

/// The panels of `keys` over `x_key` (falling back to `step`): one panel per key, or per
/// `a|b` group of keys drawn as lines of one panel. A value that is present but not a
/// finite number (`null`, as serde writes NaN) is counted as a skipped point.
pub fn panels(rows: &[Map<String, Value>], x_key: &str, keys: &[&str]) -> Vec<crate::plot::Panel> {
    let x_of = |r: &Map<String, Value>| {
        r.get(x_key)
            .or_else(|| r.get("step"))
            .and_then(|v| v.as_f64())
    };
    keys.iter()
        .map(|group| {
            let (title, y_label) = describe(group);
            let series = group
                .split('|')
                .map(|k| crate::plot::Series {
                    name: k.replace('_', " "),
                    points: rows
                        .iter()
                        .filter_map(|r| {
                            let y = r.get(k)?;
                            Some((x_of(r)?, y.as_f64().unwrap_or(f64::NAN)))
                        })
                        .collect(),
                })
                .collect();
            crate::plot::Panel {
                title,
                y_label,
                series,
            }
        })
        .collect()
}

/// Plot the given metric keys over steps, one panel each, as an SVG (nothing is written
/// when no key has a finite value).
pub fn plot(rows: &[Map<String, Value>], keys: &[&str], out: &Path) -> Result<()> {
    match crate::plot::line_panels(&panels(rows, "step", keys), "step", false) {
        Some(svg) => crate::files::write_atomic(out, svg.as_bytes()),
        None => Ok(()),
    }
}

/// A recipe's rounds as an SVG: the keys over `round` (else `step`), every round a tick,
/// markers on every point and its value beside it, so one round still reads.
pub fn rounds_svg(rows: &[Map<String, Value>], keys: &[&str]) -> Option<String> {
    crate::plot::line_panels(
        &panels(rows, "round", keys),
        "round (0 = the starting model)",
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(step: f64, v: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("step".into(), json!(step));
        m.insert("loss".into(), v);
        m
    }

    /// Values near ±1e308 made the old plot (plotters) loop forever: the span overflowed
    /// to inf and its tick search never ended. Each case must finish, in a thread so a
    /// regression fails instead of hanging the suite.
    #[test]
    fn extreme_values_plot_without_hanging() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let d = std::env::temp_dir().join(format!(
                "ponder-plot-extremes-{}-{:x}",
                std::process::id(),
                crate::util::fresh_seed()
            ));
            std::fs::create_dir_all(&d).unwrap();
            let cases: Vec<Vec<Map<String, Value>>> = vec![
                vec![row(1.0, json!(1e308)), row(2.0, json!(-1e308))],
                vec![
                    row(1.0, json!(f64::MAX)),
                    row(2.0, json!(-f64::MAX)),
                    row(3.0, json!(0.0)),
                ],
                vec![
                    row(1.0, json!(1e308)),
                    row(2.0, json!(1.0000000000000002e308)),
                ],
                vec![row(-1e308, json!(1.0)), row(1e308, json!(2.0))],
                vec![row(1.0, json!(5e-324)), row(2.0, json!(1e-323))],
                vec![row(1.0, Value::Null), row(2.0, json!(3.0))],
                vec![row(1.0, json!(0.5))],
            ];
            for (i, rows) in cases.iter().enumerate() {
                let out = d.join(format!("{i}.svg"));
                plot(rows, &["loss"], &out).unwrap();
                let svg = std::fs::read_to_string(&out).unwrap();
                assert!(
                    svg.contains("<circle") && svg.ends_with("</svg>"),
                    "case {i}"
                );
                assert!(
                    !svg.contains("NaN") && !svg.contains("inf"),
                    "case {i}: {svg}"
                );
            }
            // non-finite points straight into the chart: skipped and counted
            let p = crate::plot::Panel {
                title: "t".into(),
                y_label: "y".into(),
                series: vec![crate::plot::Series {
                    name: "s".into(),
                    points: vec![
                        (0.0, f64::NAN),
                        (1.0, f64::INFINITY),
                        (2.0, -f64::INFINITY),
                        (3.0, 1.0),
                        (f64::NAN, 2.0),
                    ],
                }],
            };
            let svg = crate::plot::line_panels(&[p], "x", true).unwrap();
            assert!(svg.contains("4 non-finite value(s) not drawn"));
            let _ = std::fs::remove_dir_all(&d);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("plotting extreme values did not finish in 30 s (or panicked)");
    }

    #[test]
    fn one_round_plot_has_markers_and_round_zero() {
        let rows: Vec<Map<String, Value>> = [(0, 0.4, 80.0), (1, 0.45, 90.0)]
            .iter()
            .map(|&(r, a, t)| {
                let mut m = Map::new();
                m.insert("round".into(), json!(r));
                m.insert("accuracy".into(), json!(a));
                m.insert("mean_tokens".into(), json!(t));
                m
            })
            .collect();
        let svg = rounds_svg(&rows, &["accuracy", "mean_tokens", "positives"]).unwrap();
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
        for t in [
            ">0<",
            ">1<",
            ">0.450<",
            "Held-out accuracy",
            "round (0 = the starting model)",
        ] {
            assert!(svg.contains(t), "{t} missing");
        }
    }
}
