//! The HTML reports (`OUT/report.html`): self-contained (no URL, no script, the plots as
//! inline SVG), every text escaped, the pairs browsable; and rendered by a real browser,
//! headless Chromium, to a PNG that is not blank. Without Chromium the render checks skip
//! with a printed reason, and fail instead when `CI` is set (CI installs Debian's
//! `chromium`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ponder::recipes::demo::{paper_checks, summary_svg, Row};
use ponder::recipes::report::{write_demo, write_run, DemoRow, RunReport};
use serde_json::{json, Map, Value};

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("report-{tag}"))
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ponder-tiny")
}

fn ponder(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ponder {args:?} failed:\n{text}");
    text
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// What every report must hold to be self-contained: no URL of any scheme a browser would
/// fetch, no script, no external style or image, the plots inline.
fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for bad in [
        "http://", "https://", "//cdn", "<script", "<link", "<img", "<iframe", "@import", "url(",
        " src=",
    ] {
        assert!(!lower.contains(bad), "the report holds {bad:?}");
    }
    assert!(lower.starts_with("<!doctype html>"));
    assert!(lower.contains("<meta charset=\"utf-8\">"));
    assert!(
        lower.contains("<svg") && lower.contains("</svg>"),
        "no inline svg"
    );
    assert!(lower.trim_end().ends_with("</html>"));
}

/// A TPO-shaped run folder with 25 pairs whose text needs escaping.
fn synthetic_run(d: &Path) -> String {
    let rows: Vec<Map<String, Value>> = vec![
        obj(json!({"round": 0, "step": 0, "accuracy": 0.4, "mean_tokens": 80.5})),
        obj(
            json!({"step": 1, "round": 1, "pairs": 25, "accuracy": 0.45, "mean_tokens": 78.0, "judge_score": 0.7, "mean_chosen_length": 4.0, "mean_rejected_length": 9.5, "kept": true}),
        ),
    ];
    std::fs::write(
        d.join("rounds.jsonl"),
        rows[1..]
            .iter()
            .map(|r| format!("{}\n", Value::Object(r.clone())))
            .collect::<String>(),
    )
    .unwrap();
    let pairs: String = (0..25)
        .map(|i| {
            format!(
                "{}\n",
                json!({
                    "prompt": format!("Q{i}: is 1 < 2 && \"quoted\" <script>alert('x')</script>?"),
                    "answer": "42",
                    "chosen": "think <b>bold</b>\n#### 42",
                    "rejected": "no delimiter & no answer",
                    "chosen_thought": "think <b>bold</b>\n",
                    "chosen_response": "#### 42",
                    "rejected_thought": null,
                    "rejected_response": null,
                    "chosen_score": 1.0,
                    "rejected_score": null,
                    "chosen_tokens": 7,
                    "rejected_tokens": 5
                })
            )
        })
        .collect();
    std::fs::create_dir_all(d.join("round-1")).unwrap();
    std::fs::write(d.join("round-1/pairs.jsonl"), pairs).unwrap();
    let svg = ponder::train::metrics::rounds_svg(
        &rows,
        &["accuracy", "mean_chosen_length|mean_rejected_length"],
    )
    .unwrap();
    write_run(
        d,
        &RunReport {
            recipe: "tpo",
            title: "TPO <test> & co",
            settings: "TpoOpts { template: \"{instruction} <R>\" }",
            rows: &rows,
            svg: Some(&svg),
        },
    )
    .unwrap();
    std::fs::read_to_string(d.join("report.html")).unwrap()
}

#[test]
fn a_run_report_is_self_contained_escaped_and_browsable() {
    let d = tmp("synthetic");
    let html = synthetic_run(&d);
    assert_self_contained(&html);
    // the rounds table with round 0, the plot, 20 of the 25 pairs, the settings
    assert!(html.contains("<table class=\"data\">") && html.contains("0 (start)"));
    assert!(html.contains("The first 20 of 25 pairs"));
    assert_eq!(html.matches("<details class=\"pair\"").count(), 20);
    for t in [
        "chosen: the best-judged output",
        "rejected: the worst-judged output",
    ] {
        assert!(html.contains(t), "{t} missing");
    }
    assert!(html.contains("correct (42)") && html.contains("no answer"));
    assert!(html.contains("judge score 1") && html.contains("7 tokens"));
    assert!(html.contains(">thought<") && html.contains(">response<"));
    // every text escaped: nothing of the data became markup
    assert!(!html.contains("<script") && !html.contains("<b>bold"));
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("1 &lt; 2 &amp;&amp; &quot;quoted&quot;"));
    assert!(html.contains("TPO &lt;test&gt; &amp; co"));
    assert!(html.contains("{instruction} &lt;R&gt;"));
    let _ = std::fs::remove_dir_all(&d);
}

/// The demo's rows in the shape of the papers (every check passes) and one that fails.
fn demo_rows(thinkpo_acc: f64) -> Vec<Row> {
    let row = |stage, from, accuracy, mean_tokens| Row {
        stage,
        from,
        accuracy,
        mean_tokens,
        n: 250,
    };
    vec![
        row("sft", None, 0.30, 80.0),
        row("self-train", Some("sft"), 0.32, 78.0),
        row("dpo-st", Some("sft"), 0.35, 77.0),
        row("sft-long", None, 0.20, 130.0),
        row("thinkpo", Some("sft-long"), thinkpo_acc, 140.0),
        row("tpo", Some("sft"), 0.31, 75.0),
    ]
}

#[test]
fn the_demo_report_shows_the_checks_and_links_each_recipe() {
    let good = paper_checks(&demo_rows(0.22));
    assert_eq!(good.len(), 4);
    assert!(good.iter().all(|c| c.ok), "{good:?}");
    let bad = paper_checks(&demo_rows(0.18));
    assert_eq!(bad.iter().filter(|c| !c.ok).count(), 1, "{bad:?}");
    assert!(bad[2]
        .text
        .starts_with("ThinkPO accuracy > sft-long accuracy"));
    // a missing stage fails its check
    let mut missing = demo_rows(0.22);
    missing.retain(|r| r.stage != "tpo");
    assert!(!paper_checks(&missing)[3].ok);

    let d = tmp("demo");
    let rows = demo_rows(0.18);
    let svg = summary_svg(&rows, &bad);
    // grouped bars: six bars, each labelled with its stage and value
    assert_eq!(
        svg.matches("<rect").count() - 1,
        2 * 6 + 2,
        "bars and legend swatches"
    );
    for t in [
        ">sft-long<",
        ">thinkpo<",
        ">0.180<",
        ">140.0<",
        ">+0.020<",
        "from sft-long",
    ] {
        assert!(svg.contains(t), "{t} missing from the figure");
    }
    let view: Vec<DemoRow> = rows
        .iter()
        .map(|r| DemoRow {
            stage: r.stage,
            from: r.from,
            accuracy: r.accuracy,
            mean_tokens: r.mean_tokens,
            n: r.n,
        })
        .collect();
    write_demo(&d, &view, &bad, &svg, 12.0).unwrap();
    let html = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert_self_contained(&html);
    for link in ["self-train", "dpo-st", "thinkpo", "tpo"] {
        assert!(
            html.contains(&format!("href=\"{link}/report.html\"")),
            "no link to {link}"
        );
    }
    assert!(html.contains("DPO-ST accuracy &gt; self-train accuracy &gt; SFT accuracy"));
    assert_eq!(html.matches("class=\"mark ok\"").count(), 3);
    assert_eq!(html.matches("class=\"mark bad\"").count(), 1);
    render_or_skip(&d.join("report.html"), &d);
    let _ = std::fs::remove_dir_all(&d);
}

/// A real recipe run (TPO, one round, CI-sized) writes its report: round 0, the plot, its
/// pairs with thought and response apart, its settings; it renders in Chromium.
#[test]
fn a_tpo_run_writes_a_report_that_renders() {
    let d = tmp("tpo");
    let data = d.join("data");
    #[rustfmt::skip]
    ponder(&["data", "synth", "--out", data.to_str().unwrap(), "--n-train", "16", "--n-dev", "4", "--n-test", "6", "--seed", "5"]);
    let out = d.join("tpo");
    let m = models();
    #[rustfmt::skip]
    let text = ponder(&[
        "tpo", "--model", m.join("sft-short").to_str().unwrap(),
        "--data", data.join("train-short.jsonl").to_str().unwrap(),
        "--eval-data", data.join("test-short.jsonl").to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--template", "answer-line", "--rounds", "1",
        "--per-round", "8", "--k", "4", "--rho", "0.5", "--calculator", "--max-new-tokens", "100",
        "--quiet",
    ]);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_self_contained(&html);
    assert!(html.contains("Thought Preference Optimization"), "{text}");
    assert!(html.contains("0 (start)"), "no round 0:\n{text}");
    assert!(html.contains("TpoOpts {"), "no settings");
    let start: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("start.json")).unwrap()).unwrap();
    assert_eq!(start["round"], 0);
    assert!(start["accuracy"].as_f64().is_some());
    // the rounds plot starts at round 0, with markers
    let svg = std::fs::read_to_string(out.join("rounds.svg")).unwrap();
    assert!(svg.contains("<circle") && svg.contains(">0<") && svg.contains(">1<"));
    let pairs = std::fs::read_to_string(out.join("round-1/pairs.jsonl")).unwrap();
    let n = pairs.lines().count();
    if n > 0 {
        assert_eq!(
            html.matches("<details class=\"pair\"").count(),
            n.min(20),
            "{html}"
        );
        let first: Value = serde_json::from_str(pairs.lines().next().unwrap()).unwrap();
        assert!(first["answer"].is_string() && first["chosen_tokens"].is_u64());
    } else {
        assert!(html.contains("No pairs"));
    }
    render_or_skip(&out.join("report.html"), &d);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_synthetic_report_renders() {
    let d = tmp("render");
    synthetic_run(&d);
    render_or_skip(&d.join("report.html"), &d);
    let _ = std::fs::remove_dir_all(&d);
}

/// Debian's `chromium`, else one on PATH.
fn chromium() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Render `html` to a 1200x2000 PNG with headless Chromium (a fresh profile, nothing
/// fetched) within two minutes; the PNG's bytes.
fn screenshot(chrome: &Path, html: &Path, dir: &Path, name: &str) -> Vec<u8> {
    let png = dir.join(format!("{name}.png"));
    let profile = dir.join(format!("chromium-profile-{name}"));
    std::fs::create_dir_all(&profile).unwrap();
    let url = format!("file://{}", html.canonicalize().unwrap().display());
    let mut child = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,2000")
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish rendering {url} in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium failed on {url}: {status}");
    std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot of {url}: {e}"))
}

/// A PNG's width and height (from its IHDR chunk).
fn png_size(b: &[u8]) -> (u32, u32) {
    assert!(b.len() > 24 && b.starts_with(b"\x89PNG\r\n\x1a\n") && &b[12..16] == b"IHDR");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

/// Render `html` and a blank page: the report's PNG must be the window's size and far
/// larger than the blank page's (a white page compresses to ~11 KB; text, tables and
/// plots do not).
fn render_or_skip(html: &Path, dir: &Path) {
    let Some(chrome) = chromium() else {
        assert!(
            !in_ci(),
            "CI is set but chromium is not installed (.ci/run installs Debian's `chromium`)"
        );
        eprintln!(
            "skipped rendering {}: chromium not found (apt-get install chromium)",
            html.display()
        );
        return;
    };
    let blank = dir.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>\n").unwrap();
    let b = screenshot(&chrome, &blank, dir, "blank");
    let r = screenshot(&chrome, html, dir, "report");
    assert_eq!(png_size(&r), (1200, 2000));
    assert!(
        r.len() > 20_000 && r.len() > 3 * b.len(),
        "the rendered report looks blank: {} bytes against {} for a blank page",
        r.len(),
        b.len()
    );
}
