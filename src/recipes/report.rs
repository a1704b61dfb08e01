//! The HTML report of a run, `OUT/report.html`: one self-contained page (inline CSS and
//! SVG, no script, nothing fetched) that says what the run did.
//!
//! A recipe's report holds the rounds table (round 0 is the evaluated starting model), the
//! rounds plot, a browsable sample of the last round's preference pairs (chosen beside
//! rejected, each side's answer check against the question's gold answer, its length in
//! tokens and, for TPO, its judge score and its thought and response apart), and the
//! settings the run used. `ponder demo`'s report holds its summary figure and table and
//! links the recipes' reports.
//!
//! Pairs are read back from the round's `pairs.jsonl`, whose lines carry their text:
//! `prompt`, `answer` (gold), `chosen`/`rejected` text (self-training's `chosen_text` /
//! `rejected_text`, its `chosen`/`rejected` being ids), `chosen_tokens`/`rejected_tokens`,
//! and for TPO `chosen_score`/`rejected_score` and `*_thought`/`*_response`.

use std::fmt::Write;
use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use super::answer;
use crate::error::{Error, Result};
use crate::plot::{escape, fmt_value, Check};

/// Pairs shown per report.
pub const PAIRS_SHOWN: usize = 20;
/// Pair details open when the page loads.
const PAIRS_OPEN: usize = 2;

const CSS: &str = r#"
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; color: #1d1d1f; margin: 24px auto; max-width: 1160px; padding: 0 16px; line-height: 1.45; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; margin: 0 0 8px; }
code, pre { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
table.data { border-collapse: collapse; font-size: 13.5px; }
table.data th, table.data td { border: 1px solid #d6d6d6; padding: 4px 9px; text-align: right; }
table.data th { background: #f1f3f5; }
table.data td.l, table.data th.l { text-align: left; }
table.data tr.start td { background: #f7f7f2; }
.figure svg { max-width: 100%; height: auto; border: 1px solid #e6e6e6; }
details.pair { border: 1px solid #d6d6d6; border-radius: 6px; margin: 8px 0; background: #fff; }
details.pair > summary { cursor: pointer; padding: 7px 10px; background: #f6f7f9; border-radius: 6px; }
details.pair[open] > summary { border-bottom: 1px solid #e2e2e2; border-radius: 6px 6px 0 0; }
.q { padding: 8px 12px 0; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; padding: 10px 12px 12px; }
.side { border: 1px solid #e2e2e2; border-radius: 5px; padding: 8px; min-width: 0; }
.side.chosen { border-top: 4px solid #2e7d32; }
.side.rejected { border-top: 4px solid #c62828; }
.side h4 { margin: 0 0 6px; font-size: 14px; }
.part { font-size: 12px; color: #666; margin: 6px 0 2px; text-transform: uppercase; letter-spacing: 0.04em; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f8fa; padding: 8px; margin: 0; border-radius: 4px; max-height: 360px; overflow: auto; }
.b { display: inline-block; font-size: 12px; padding: 1px 7px; border-radius: 10px; background: #eceff1; margin: 0 4px 3px 0; }
.b.ok { background: #d8f0dc; color: #1b5e20; }
.b.bad { background: #fbdcdc; color: #8e1b1b; }
.b.none { background: #fff1cc; color: #7a5400; }
ul.checks { list-style: none; padding-left: 0; }
ul.checks li { margin: 4px 0; }
.mark { display: inline-block; width: 20px; text-align: center; font-weight: bold; border-radius: 10px; color: #fff; margin-right: 6px; }
.mark.ok { background: #1b873f; }
.mark.bad { background: #c62828; }
"#;

/// An SVG document as an element of the page: HTML needs no namespace declaration, and
/// without it the page names no URL at all.
fn inline_svg(svg: &str) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// A whole page around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n",
        escape(title)
    )
}

/// A table cell's text for a JSON value.
fn cell(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() && x.abs() < 1.0 && x != 0.0 => format!("{x:.4}"),
            Some(x) if n.is_f64() => fmt_value(x),
            _ => n.to_string(),
        },
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The rounds as a table: one column per key (in order of first appearance; `step` left
/// out when `round` is there), round 0 marked as the starting model.
pub fn rounds_table(rows: &[Map<String, Value>]) -> String {
    let mut keys: Vec<&str> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    if keys.contains(&"round") {
        keys.retain(|k| *k != "step");
        keys.retain(|k| *k != "round");
        keys.insert(0, "round");
    }
    let mut s = String::from("<table class=\"data\"><thead><tr>");
    for k in &keys {
        let _ = write!(s, "<th>{}</th>", escape(&k.replace('_', " ")));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        let start = r.get("round").and_then(|v| v.as_u64()) == Some(0);
        s.push_str(if start {
            "<tr class=\"start\">"
        } else {
            "<tr>"
        });
        for k in &keys {
            // a one-step recipe's row numbers its step only
            let v = match *k {
                "round" => r.get("round").or_else(|| r.get("step")),
                k => r.get(k),
            };
            let mut t = v.map(cell).unwrap_or_default();
            if start && (*k == "round" || *k == "step") {
                t.push_str(" (start)");
            }
            let _ = write!(s, "<td>{}</td>", escape(&t));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// One side of a pair, as shown.
struct Side {
    text: String,
    thought: Option<String>,
    response: Option<String>,
    score: Option<f64>,
    tokens: Option<u64>,
}

fn side(row: &Map<String, Value>, name: &str) -> Side {
    let s = |k: String| row.get(&k).and_then(|v| v.as_str()).map(String::from);
    Side {
        text: s(format!("{name}_text"))
            .or_else(|| s(name.to_string()))
            .unwrap_or_default(),
        thought: s(format!("{name}_thought")),
        response: s(format!("{name}_response")),
        score: row.get(&format!("{name}_score")).and_then(|v| v.as_f64()),
        tokens: row.get(&format!("{name}_tokens")).and_then(|v| v.as_u64()),
    }
}

/// The answer check of `text` against `gold` as a badge: (class, words).
fn answer_badge(text: &str, gold: Option<&str>) -> (&'static str, String) {
    let Some(gold) = gold else {
        return match answer::extract(text) {
            Some(a) => ("", format!("answer {a}")),
            None => ("none", "no answer".into()),
        };
    };
    match answer::check(text, gold) {
        (Some(a), true) => ("ok", format!("correct ({a})")),
        (Some(a), false) => ("bad", format!("wrong ({a})")),
        (None, _) => ("none", "no answer".into()),
    }
}

fn first_line(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > max {
        format!("{}…", one.chars().take(max).collect::<String>())
    } else {
        one
    }
}

/// Captions of the chosen and rejected sides for a recipe (its command name).
fn captions(recipe: &str) -> (&'static str, &'static str) {
    match recipe {
        "self-train" => ("chosen: a correct rationale", "rejected: a wrong rationale"),
        "thinkpo" => ("chosen: the long answer", "rejected: the short answer"),
        "tpo" => (
            "chosen: the best-judged output",
            "rejected: the worst-judged output",
        ),
        _ => ("chosen", "rejected"),
    }
}

/// Up to `limit` pair lines of a pairs file and the number of lines in it.
fn read_pairs(path: &Path, limit: usize) -> Result<(Vec<Map<String, Value>>, usize)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let (mut rows, mut n) = (Vec::new(), 0usize);
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        if rows.len() < limit {
            // a line that does not parse is shown empty rather than failing the report
            rows.push(match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(o)) => o,
                _ => Map::new(),
            });
        }
    }
    Ok((rows, n))
}

/// The pairs section: a summary line per pair, opening onto chosen beside rejected.
fn pairs_section(recipe: &str, rows: &[Map<String, Value>], total: usize, from: &str) -> String {
    let (cc, rc) = captions(recipe);
    let mut s = format!(
        "<p class=\"meta\">The first {} of {total} pairs in <a href=\"{}\"><code>{}</code></a>. Each side: its answer checked against the question's gold answer, its length in tokens{}.</p>",
        rows.len(),
        escape(from),
        escape(from),
        if recipe == "tpo" { ", the judge's score of its response, and its thought and response apart" } else { "" }
    );
    for (i, r) in rows.iter().enumerate() {
        let gold = r
            .get("answer")
            .and_then(|v| v.as_str())
            .filter(|g| !g.trim().is_empty());
        let prompt = r.get("prompt").and_then(|v| v.as_str()).unwrap_or("");
        let (c, j) = (side(r, "chosen"), side(r, "rejected"));
        let checked = |x: &Side| answer_badge(x.response.as_deref().unwrap_or(&x.text), gold);
        let (cb, jb) = (checked(&c), checked(&j));
        let tok = |x: &Side| {
            x.tokens
                .map_or("? tokens".into(), |t| format!("{t} tokens"))
        };
        let _ = write!(
            s,
            "<details class=\"pair\"{}><summary><b>#{}</b> {} &nbsp;·&nbsp; gold <b>{}</b> &nbsp;·&nbsp; chosen <span class=\"b {}\">{}</span> {} &nbsp;·&nbsp; rejected <span class=\"b {}\">{}</span> {}</summary>",
            if i < PAIRS_OPEN { " open" } else { "" },
            i + 1,
            escape(&first_line(prompt, 70)),
            escape(gold.unwrap_or("?")),
            cb.0,
            escape(&cb.1),
            escape(&tok(&c)),
            jb.0,
            escape(&jb.1),
            escape(&tok(&j)),
        );
        let _ = write!(
            s,
            "<div class=\"q\"><div class=\"part\">prompt</div><pre>{}</pre></div><div class=\"sides\">",
            escape(prompt)
        );
        for (x, b, cap, class) in [(&c, &cb, cc, "chosen"), (&j, &jb, rc, "rejected")] {
            let _ = write!(
                s,
                "<div class=\"side {class}\"><h4>{}</h4><span class=\"b {}\">{}</span><span class=\"b\">{}</span>",
                escape(cap),
                b.0,
                escape(&b.1),
                escape(&tok(x))
            );
            if recipe == "tpo" {
                let score = x.score.map_or("not judged (no response)".into(), |v| {
                    format!("judge score {}", fmt_value(v))
                });
                let _ = write!(s, "<span class=\"b\">{}</span>", escape(&score));
            }
            match (&x.thought, &x.response) {
                (Some(t), Some(r)) => {
                    let _ = write!(
                        s,
                        "<div class=\"part\">thought</div><pre>{}</pre><div class=\"part\">response</div><pre>{}</pre>",
                        escape(t),
                        escape(r)
                    );
                }
                _ => {
                    let label = if recipe == "tpo" {
                        "output (no response delimiter: not split)"
                    } else {
                        "completion"
                    };
                    let _ = write!(
                        s,
                        "<div class=\"part\">{label}</div><pre>{}</pre>",
                        escape(&x.text)
                    );
                }
            }
            s.push_str("</div>");
        }
        s.push_str("</div></details>");
    }
    s
}

/// What a recipe's report shows.
pub struct RunReport<'a> {
    /// The recipe's command (`self-train`, `thinkpo`, `tpo`): names the pair sides.
    pub recipe: &'a str,
    /// A heading, e.g. "DPO-augmented self-training".
    pub title: &'a str,
    /// The options the run used, as Debug prints them.
    pub settings: &'a str,
    /// Round 0 (the evaluated starting model, when known) and the finished rounds.
    pub rows: &'a [Map<String, Value>],
    /// The rounds plot.
    pub svg: Option<&'a str>,
}

/// Write `out/report.html` for a recipe's run; the pairs are the last round's
/// (`round-N/pairs.jsonl`, else `pairs.jsonl`).
pub fn write_run(out: &Path, r: &RunReport) -> Result<()> {
    let mut b = format!(
        "<h1>{}</h1><p class=\"meta\"><code>ponder {}</code> · output <code>{}</code> · {} finished round(s)</p>",
        escape(r.title),
        escape(r.recipe),
        escape(&out.display().to_string()),
        r.rows
            .iter()
            .filter(|x| x.get("round").and_then(|v| v.as_u64()) != Some(0))
            .count()
    );
    b.push_str("<h2>Rounds</h2>");
    if r.rows
        .first()
        .and_then(|x| x.get("round"))
        .and_then(|v| v.as_u64())
        == Some(0)
    {
        b.push_str(
            "<p class=\"meta\">Round 0 is the starting model, evaluated before any training.</p>",
        );
    }
    b.push_str(&rounds_table(r.rows));
    b.push_str(
        "<p class=\"meta\">Data: <a href=\"rounds.jsonl\"><code>rounds.jsonl</code></a>.</p>",
    );
    if let Some(svg) = r.svg {
        let _ = write!(
            b,
            "<h2>Plots</h2><div class=\"figure\">{}</div><p class=\"meta\">Also as <a href=\"rounds.svg\"><code>rounds.svg</code></a>.</p>",
            inline_svg(svg)
        );
    }
    b.push_str("<h2>Preference pairs</h2>");
    let last = r
        .rows
        .iter()
        .rev()
        .find_map(|x| {
            x.get("round")
                .or_else(|| x.get("step"))
                .and_then(|v| v.as_u64())
        })
        .filter(|&n| n > 0);
    let candidates: Vec<String> = last
        .map(|n| format!("round-{n}/pairs.jsonl"))
        .into_iter()
        .chain(["pairs.jsonl".to_string()])
        .collect();
    match candidates.iter().find(|c| out.join(c).is_file()) {
        Some(rel) => {
            let (rows, total) = read_pairs(&out.join(rel), PAIRS_SHOWN)?;
            if total == 0 {
                let _ = write!(
                    b,
                    "<p>No pairs: <code>{}</code> is empty (no question had both a chosen and a rejected side).</p>",
                    escape(rel)
                );
            } else {
                b.push_str(&pairs_section(r.recipe, &rows, total, rel));
            }
        }
        None => b.push_str(
            "<p>The last round wrote no preference pairs (plain self-training has no DPO step).</p>",
        ),
    }
    let _ = write!(b, "<h2>Settings</h2><pre>{}</pre>", escape(r.settings));
    let html = page(&format!("{} — ponder {}", r.title, r.recipe), &b);
    crate::files::write_atomic(&out.join("report.html"), html.as_bytes())
}

/// One stage of the demo's table, as the report shows it.
pub struct DemoRow<'a> {
    pub stage: &'a str,
    pub from: Option<&'a str>,
    pub accuracy: f64,
    pub mean_tokens: f64,
    pub n: usize,
}

/// Write the demo's `out/report.html`: the summary figure, the table (each recipe's change
/// from its starting model, and a link to its own report), the paper-shape checks.
pub fn write_demo(
    out: &Path,
    rows: &[DemoRow],
    checks: &[Check],
    svg: &str,
    seconds: f64,
) -> Result<()> {
    let mut b = format!(
        "<h1>ponder demo</h1><p class=\"meta\">Output <code>{}</code> · {:.0} s. Each recipe beside the model it started from, evaluated on the same held-out questions.</p><div class=\"figure\">{}</div>",
        escape(&out.display().to_string()),
        seconds,
        inline_svg(svg)
    );
    b.push_str("<h2>Table</h2><table class=\"data\"><thead><tr><th class=\"l\">stage</th><th class=\"l\">from</th><th>accuracy</th><th>change</th><th>mean tokens</th><th>change</th><th>n</th><th class=\"l\">report</th></tr></thead><tbody>");
    for r in rows {
        let base = r.from.and_then(|f| rows.iter().find(|x| x.stage == f));
        let (da, dt) = match base {
            Some(x) => (
                format!("{:+.3}", r.accuracy - x.accuracy),
                format!("{:+.1}", r.mean_tokens - x.mean_tokens),
            ),
            None => ("".into(), "".into()),
        };
        let link = if r.from.is_some() {
            format!(
                "<a href=\"{0}/report.html\">{0}/report.html</a>",
                escape(r.stage)
            )
        } else {
            "starting model".into()
        };
        let _ = write!(
            b,
            "<tr{}><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{:.3}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td class=\"l\">{link}</td></tr>",
            if r.from.is_none() { " class=\"start\"" } else { "" },
            escape(r.stage),
            escape(r.from.unwrap_or("-")),
            r.accuracy,
            escape(&da),
            r.mean_tokens,
            escape(&dt),
            r.n
        );
    }
    b.push_str("</tbody></table>");
    b.push_str("<h2>Paper-shape checks</h2><ul class=\"checks\">");
    for c in checks {
        let _ = write!(
            b,
            "<li><span class=\"mark {}\">{}</span>{}</li>",
            if c.ok { "ok" } else { "bad" },
            if c.ok { "&#10003;" } else { "&#10007;" },
            escape(&c.text)
        );
    }
    b.push_str("</ul><p class=\"meta\">Data: <a href=\"summary.json\"><code>summary.json</code></a>, figure: <a href=\"summary.svg\"><code>summary.svg</code></a>.</p>");
    let html = page("ponder demo", &b);
    crate::files::write_atomic(&out.join("report.html"), html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_badges_say_correct_wrong_or_no_answer() {
        assert_eq!(answer_badge("so\n#### 42", Some("42")).0, "ok");
        assert_eq!(
            answer_badge("so\n#### 41", Some("42")),
            ("bad", "wrong (41)".into())
        );
        assert_eq!(answer_badge("no idea", Some("42")).0, "none");
    }

    #[test]
    fn the_table_marks_round_zero_and_drops_step() {
        let rows: Vec<Map<String, Value>> = [
            serde_json::json!({"round": 0, "step": 0, "accuracy": 0.5}),
            serde_json::json!({"step": 1, "round": 1, "accuracy": 0.625, "kept": true}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let t = rounds_table(&rows);
        assert!(t.contains("0 (start)") && t.contains("0.6250") && t.contains("yes"));
        assert!(!t.contains(">step<"));
    }
}
