//! Question/answer data for evaluation and the recipes, and the synthetic task's files.
//!
//! Evaluation lines are `{"prompt"|"question", "answer"}`; prediction lines are
//! `{"completion"}`. The synthetic task is written in the formats the trainers read:
//! `{"prompt", "completion"}` for SFT, with `answer` (and `question`) alongside.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::answer;
use super::synth::{Problem, Splits};
use crate::error::{Error, Result};

/// One evaluation question: the prompt text and its gold answer (already extracted from a
/// GSM8K-style field).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
    /// A gold rationale, when the line has one: its `completion` (or `rationale`) field,
    /// else a GSM8K-style `answer` field (rationale, then `#### N`) itself.
    pub rationale: Option<String>,
}

/// The first of `names` on a JSONL line: a string, or a number as its text (a bare
/// answer such as `42`); another type is an error naming the field and what it holds.
pub(crate) fn text_field(
    path: &Path,
    line: usize,
    o: &serde_json::Map<String, Value>,
    names: &[&str],
) -> Result<String> {
    for n in names {
        match o.get(*n) {
            Some(Value::String(s)) => return Ok(s.clone()),
            Some(Value::Number(x)) => return Ok(x.to_string()),
            Some(Value::Null) | None => continue,
            Some(other) => {
                return Err(Error::file(
                    path,
                    format!("line {line}: field `{n}`: expected a string, got {other}"),
                ))
            }
        }
    }
    Err(Error::file(
        path,
        format!("line {line}: missing field `{}`", names.join("` or `")),
    ))
}

/// A number's text exactly as the line writes it (`1e20`, a 30-digit integer): parsed
/// into an f64 first, either would come back as another string and never match a
/// prediction that wrote it exactly.
fn number_text(line_text: &str, key: &str) -> Option<String> {
    let raw: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(line_text).ok()?;
    Some(raw.get(key)?.get().trim().to_string())
}

/// Read `{"prompt"|"question", "answer"}` lines.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    crate::train::data::read_jsonl_lines(path)?
        .into_iter()
        .map(|(line, o, text)| {
            let raw = match o.get("answer") {
                Some(Value::Number(_)) => number_text(&text, "answer").ok_or_else(|| {
                    Error::file(
                        path,
                        format!("line {line}: field `answer`: unreadable number"),
                    )
                })?,
                _ => text_field(path, line, &o, &["answer"])?,
            };
            let rationale = text_field(path, line, &o, &["completion", "rationale"])
                .ok()
                .or_else(|| raw.contains("####").then(|| raw.clone()));
            Ok(Example {
                prompt: text_field(path, line, &o, &["prompt", "question"])?,
                answer: answer::gold_answer(&raw),
                rationale,
            })
        })
        .collect()
}

/// Read `{"completion"}` lines (line i answers example i).
pub fn read_predictions(path: &Path) -> Result<Vec<String>> {
    crate::train::data::read_jsonl_own(path)?
        .into_iter()
        .map(|(line, o)| text_field(path, line, &o, &["completion"]))
        .collect()
}

/// Write JSON lines atomically.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    // of several MPI ranks, rank 0 alone writes (they all hold the same rows)
    if !crate::dist::is_root() {
        return Ok(());
    }
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    crate::files::write_atomic(path, text.as_bytes())
}

/// The prompt a synthetic question is asked with: the question, then a new line.
pub fn synth_prompt(question: &str) -> String {
    format!("{question}\n")
}

fn sft_row(p: &Problem, completion: &str) -> Value {
    json!({
        "prompt": synth_prompt(&p.question),
        "completion": completion,
        "answer": p.answer.to_string(),
        "question": p.question,
        "steps": p.ops.len(),
    })
}

/// Write the synthetic task under `dir`: for each split `S` of train/dev/test,
/// `S-short.jsonl` and `S-long.jsonl` (SFT format, `answer` alongside), plus
/// `train-mixed.jsonl` (long rationales, short ones for one-step problems),
/// `pretrain.jsonl` (question and both rationales of every training problem as one
/// completion with an empty prompt) and `corpus.txt` (the same texts, for the tokenizer).
pub fn write_synth(dir: &Path, s: &Splits) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, probs) in [("train", &s.train), ("dev", &s.dev), ("test", &s.test)] {
        for (style, pick) in [
            (
                "short",
                (|p: &Problem| p.short.clone()) as fn(&Problem) -> String,
            ),
            ("long", |p: &Problem| p.long.clone()),
        ] {
            let path = dir.join(format!("{name}-{style}.jsonl"));
            let rows: Vec<Value> = probs.iter().map(|p| sft_row(p, &pick(p))).collect();
            write_jsonl(&path, &rows)?;
            written.push(path);
        }
    }
    // ThinkPO's long-CoT SFT data, as distilled long-CoT sets often are: the long
    // rationale of every multi-step problem, but a one-step problem answered briefly
    let path = dir.join("train-mixed.jsonl");
    let rows: Vec<Value> = s
        .train
        .iter()
        .map(|p| sft_row(p, if p.ops.len() == 1 { &p.short } else { &p.long }))
        .collect();
    write_jsonl(&path, &rows)?;
    written.push(path);
    let texts: Vec<String> = s
        .train
        .iter()
        .flat_map(|p| {
            [
                format!("{}{}", synth_prompt(&p.question), p.short),
                format!("{}{}", synth_prompt(&p.question), p.long),
            ]
        })
        .collect();
    let path = dir.join("pretrain.jsonl");
    let rows: Vec<Value> = texts
        .iter()
        .map(|t| json!({"prompt": "", "completion": t}))
        .collect();
    write_jsonl(&path, &rows)?;
    written.push(path);
    let path = dir.join("corpus.txt");
    crate::files::write_atomic(&path, texts.join("\n").as_bytes())?;
    written.push(path);
    Ok(written)
}
