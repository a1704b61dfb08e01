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

/// Plot the given metric keys over steps, one panel each, as an SVG.
pub fn plot(rows: &[Map<String, Value>], keys: &[&str], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let series: Vec<(&str, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|k| {
            (
                *k,
                rows.iter()
                    .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(*k)?.as_f64()?)))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    let fail =
        |e: &dyn std::fmt::Display| Error::invalid("plot", format!("{}: {e}", out.display()));
    let root = SVGBackend::new(out, (900, 300 * series.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((series.len(), 1));
    for ((name, pts), area) in series.iter().zip(panels.iter()) {
        let (x0, x1) = (
            pts.first().unwrap().0,
            pts.last().unwrap().0.max(pts.first().unwrap().0 + 1.0),
        );
        let (mut y0, mut y1) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.1), b.max(p.1))
            });
        if (y1 - y0).abs() < 1e-12 {
            y0 -= 0.5;
            y1 += 0.5;
        }
        let pad = (y1 - y0) * 0.05;
        let mut chart = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .draw()
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), &BLUE))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
