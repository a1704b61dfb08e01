//! A mutation fuzzer over every file and flag a user hands ponder: safetensors headers and
//! bodies, config.json, tokenizer.json, chat templates, training JSONL and training
//! flags. Each case must end in a value or an error, never a panic (a panic inside the
//! tokenizers crate is caught at its one call site and is an error too).
//!
//! A second fuzzer covers the recipes' surfaces: question and answer files, answers and
//! completions, calculator expressions, TPO thought templates, and the `rounds.jsonl`
//! and `round-N/` state a `--resume` reads; there a case that does not finish within a
//! few seconds counts as a hang.
//!
//! CI runs a bounded budget; `PONDER_FUZZ_CASES=100000 cargo test --release --test fuzz
//! -- --nocapture` is the long local run. `PONDER_SEED` replays a run.

mod common;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::{Rng, RngCore};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

fn budget() -> usize {
    std::env::var("PONDER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Flip, insert, delete or overwrite a few bytes.
fn mutate_bytes(b: &mut Vec<u8>, r: &mut impl Rng) {
    for _ in 0..r.random_range(1..4) {
        if b.is_empty() {
            b.push(r.random());
            continue;
        }
        let at = r.random_range(0..b.len());
        match r.random_range(0..5) {
            0 => b[at] ^= 1 << r.random_range(0..8),
            1 => b[at] = r.random(),
            2 => b.insert(at, r.random()),
            3 => {
                b.remove(at);
            }
            _ => {
                // a header length or a number: overwrite 8 bytes with an extreme value
                let v: u64 =
                    [0, 1, u64::MAX, u32::MAX as u64, 1 << 40, r.random()][r.random_range(0..6)];
                for (i, x) in v.to_le_bytes().iter().enumerate() {
                    if at + i < b.len() {
                        b[at + i] = *x;
                    }
                }
            }
        }
    }
}

/// Replace one leaf of a JSON value with something hostile.
fn mutate_json(v: &mut serde_json::Value, r: &mut impl Rng) {
    use serde_json::{json, Value};
    let hostile = |r: &mut dyn RngCore| -> Value {
        match r.next_u32() % 12 {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(u64::MAX),
            3 => json!(1e308),
            4 => json!(-0.0),
            5 => json!(null),
            6 => json!(""),
            7 => json!("x".repeat(1000)),
            8 => json!([]),
            9 => json!({}),
            10 => json!(1u64 << 33),
            _ => json!(true),
        }
    };
    match v {
        Value::Object(o) if !o.is_empty() => {
            let k = o.keys().nth(r.random_range(0..o.len())).cloned().unwrap();
            if r.random_bool(0.3) {
                if r.random_bool(0.2) {
                    o.remove(&k);
                } else {
                    o.insert(k, hostile(r));
                }
            } else if let Some(x) = o.get_mut(&k) {
                mutate_json(x, r);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = r.random_range(0..a.len());
            if r.random_bool(0.3) {
                a[i] = hostile(r);
            } else {
                mutate_json(&mut a[i], r);
            }
        }
        leaf => *leaf = hostile(r),
    }
}

fn tmpdir() -> common::Scratch {
    common::scratch("fuzz")
}

/// Run `f`, counting a panic as a failure (reported with the case).
fn no_panic(what: &str, case: usize, f: impl FnOnce()) -> bool {
    let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
    if !ok {
        eprintln!("PANIC in {what}, case {case}");
    }
    ok
}

#[test]
fn fuzz_files_and_flags_never_panic() {
    let seed = common::seed("fuzz");
    let mut r = ponder::util::rng(seed);
    let n = budget();
    let d = tmpdir();
    let st_src = std::fs::read(root().join("qwen2-tied/model.safetensors")).unwrap();
    let cfg_src: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("llama3-rope/config.json")).unwrap(),
    )
    .unwrap();
    let tok_src: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("qwen2-tied/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let tok = ponder::model::Tok::load(&root().join("qwen2-tied")).unwrap();
    let jsonl_src = std::fs::read(root().join("train/pairs.jsonl")).unwrap();
    let template = tok.chat_template.clone().unwrap_or_default();
    let trunc = ponder::train::data::Truncation {
        max_prompt_length: None,
        max_length: Some(64),
        mode: ponder::train::data::TruncationMode::KeepStart,
    };
    let mut panics = 0;
    let mut kinds = [0usize; 6];
    // the fixture's tokenizer directory, with tokenizer.json replaced per case
    let tokdir = d.join("tok");
    std::fs::create_dir_all(&tokdir).unwrap();
    std::fs::copy(
        root().join("qwen2-tied/tokenizer_config.json"),
        tokdir.join("tokenizer_config.json"),
    )
    .unwrap();
    for case in 0..n {
        let kind = case % 6;
        kinds[kind] += 1;
        let ok = match kind {
            0 => {
                let mut b = st_src.clone();
                mutate_bytes(&mut b, &mut r);
                let f = d.join("m.safetensors");
                std::fs::write(&f, &b).unwrap();
                no_panic("safetensors", case, || {
                    if let Ok(c) = ponder::model::weights::open_file(&f) {
                        for name in c.names().cloned().collect::<Vec<_>>() {
                            let _ = c.load_any(&name);
                        }
                    }
                })
            }
            1 => {
                let mut v = cfg_src.clone();
                mutate_json(&mut v, &mut r);
                no_panic("config.json", case, || {
                    if let Ok(cfg) = ponder::model::Config::from_json(Path::new("config.json"), v) {
                        let _ = ponder::model::Transformer::expected(&cfg);
                    }
                })
            }
            2 => {
                let mut v = tok_src.clone();
                mutate_json(&mut v, &mut r);
                std::fs::write(tokdir.join("tokenizer.json"), v.to_string()).unwrap();
                no_panic("tokenizer.json", case, || {
                    if let Ok(t) = ponder::model::Tok::load(&tokdir) {
                        if let Ok(ids) = t.encode("What is 12 + 30? <<48/2=24>>24", true) {
                            let _ = t.decode(&ids, false);
                        }
                    }
                })
            }
            3 => {
                let mut b = jsonl_src.clone();
                mutate_bytes(&mut b, &mut r);
                let f = d.join("pairs.jsonl");
                std::fs::write(&f, &b).unwrap();
                no_panic("jsonl", case, || {
                    let _ = ponder::train::data::load_pairs(&f, &tok, &trunc);
                    let _ = ponder::train::data::load_sft(&f, &tok, &trunc);
                    let _ = ponder::recipes::data::read_examples(&f);
                })
            }
            4 => {
                let mut b = template.clone().into_bytes();
                mutate_bytes(&mut b, &mut r);
                let mut t = String::from_utf8_lossy(&b).into_owned();
                if r.random_bool(0.3) {
                    // splice in namespace and set statements: a namespace stored in itself
                    // (directly, in a list, through an alias or a macro) overflowed the stack
                    const SNIPPETS: &[&str] = &[
                        "{% set ns = namespace() %}",
                        "{% set ns.x = ns %}",
                        "{% set ns.y = [ns] %}",
                        "{% set a = ns %}{% set ns.z = a %}",
                        "{% set ns.n = ns.n + 1 %}",
                        "{{ ns }}",
                        "{{ ns|tojson }}",
                        "{% macro m(p) %}{% set p.q = p %}{% endmacro %}{{ m(ns) }}",
                        "{% for v in [ns] %}{% set ns.w = v %}{% endfor %}",
                    ];
                    let mut at = r.random_range(0..=t.len());
                    while !t.is_char_boundary(at) {
                        at -= 1;
                    }
                    let snip: String = (0..r.random_range(1..4))
                        .map(|_| SNIPPETS[r.random_range(0..SNIPPETS.len())])
                        .collect();
                    t.insert_str(at, &snip);
                }
                no_panic("chat template", case, || {
                    let msgs = [ponder::model::chat::Message::new("user", "hi")];
                    let _ = ponder::model::chat::render(&t, &msgs, true, Some("<s>"), Some("</s>"));
                })
            }
            _ => {
                let flags = [
                    "--lr",
                    "--beta",
                    "--epochs",
                    "--steps",
                    "--batch-size",
                    "--grad-accum",
                    "--warmup-ratio",
                    "--weight-decay",
                    "--max-grad-norm",
                    "--max-length",
                    "--lora-r",
                    "--lora-dropout",
                    "--lora-alpha",
                    "--seed",
                ];
                let values = [
                    "nan",
                    "inf",
                    "-inf",
                    "-1",
                    "0",
                    "1e308",
                    "18446744073709551615",
                    "1",
                    "0.5",
                    "abc",
                    "",
                    "1e-300",
                ];
                let mut args: Vec<String> = vec![
                    "--model".into(),
                    "m".into(),
                    "--data".into(),
                    "d".into(),
                    "--out".into(),
                    "o".into(),
                ];
                for _ in 0..r.random_range(1..4) {
                    args.push(format!(
                        "{}={}",
                        flags[r.random_range(0..flags.len())],
                        values[r.random_range(0..values.len())]
                    ));
                }
                no_panic("flags", case, || {
                    if let Ok(a) = ponder::train::trainer::TrainArgs::from_flags(&args) {
                        let _ = a.validate();
                    }
                })
            }
        };
        panics += (!ok) as usize;
    }
    let _ = std::fs::remove_dir_all(&d);
    eprintln!(
        "fuzz: {n} cases (safetensors {}, config {}, tokenizer {}, jsonl {}, templates {}, flags {}), {panics} panics",
        kinds[0], kinds[1], kinds[2], kinds[3], kinds[4], kinds[5]
    );
    assert_eq!(panics, 0, "seed {seed}: see PANIC lines above");
}

/// Hostile text fragments for the recipe surfaces: long runs, huge numbers, markers.
const FRAGMENTS: &[&str] = &[
    "####",
    "#",
    "\n",
    " ",
    "<<",
    ">>",
    "=",
    "*",
    "/",
    "+",
    "-",
    "(",
    ")",
    ".",
    ",",
    "0",
    "7",
    "123456789",
    "99999999999999999999",
    "1e20",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "\\boxed{",
    "}",
    "{",
    "The answer is",
    "</think>",
    "<think>",
    "{instruction}",
    "$",
    "%",
    "é",
    "日",
    "\u{0}",
    "\"",
    "\\",
    "null",
    "[",
    "]",
    ":",
];

fn fragment_text(r: &mut impl Rng, max: usize) -> String {
    let n = r.random_range(0..max);
    let mut t = String::new();
    for _ in 0..n {
        let f = FRAGMENTS[r.random_range(0..FRAGMENTS.len())];
        // now and then a long run of one fragment (the quadratic and the huge cases)
        let rep = if r.random_bool(0.05) {
            r.random_range(100..5000)
        } else {
            1
        };
        t.push_str(&f.repeat(rep));
    }
    t
}

/// Run `f` on a thread and wait at most `limit`: a panic or a time-out fails the case.
fn bounded(
    what: &str,
    case: usize,
    limit: std::time::Duration,
    f: impl FnOnce() + Send + 'static,
) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
        let _ = tx.send(ok);
    });
    match rx.recv_timeout(limit) {
        Ok(true) => true,
        Ok(false) => {
            eprintln!("PANIC in {what}, case {case}");
            false
        }
        Err(_) => {
            eprintln!("HANG in {what}, case {case} (over {limit:?})");
            false
        }
    }
}

#[test]
fn fuzz_recipe_surfaces_never_panic_or_hang() {
    use serde_json::json;
    let seed = common::seed("fuzz-recipes");
    let mut r = ponder::util::rng(seed);
    let n = budget();
    let d = tmpdir();
    let limit = std::time::Duration::from_secs(10);
    let question_src = "{\"question\": \"Tom has 3 bags of 4. How many?\", \"answer\": \"12\"}\n{\"prompt\": \"a\", \"answer\": \"rationale <<3*4=12>>12\\n#### 12\", \"completion\": \"x #### 12\"}\n";
    let rounds_src = "{\"step\": 1, \"round\": 1, \"accuracy\": 0.5, \"mean_tokens\": 40.0, \"positives\": 12}\n{\"step\": 2, \"round\": 2, \"accuracy\": 0.6, \"mean_tokens\": 38.5, \"positives\": 20}\n";
    let mut panics = 0;
    let mut kinds = [0usize; 5];
    for case in 0..n {
        let kind = case % 5;
        kinds[kind] += 1;
        let ok = match kind {
            0 => {
                // question / answer / prediction files
                let mut b = question_src.as_bytes().to_vec();
                mutate_bytes(&mut b, &mut r);
                if r.random_bool(0.3) {
                    let extra = json!({"question": fragment_text(&mut r, 8), "answer": fragment_text(&mut r, 6)});
                    b.extend(format!("{extra}\n").as_bytes());
                }
                if r.random_bool(0.2) {
                    // an answer as a JSON number, exotic or huge
                    let num = [
                        "1e20",
                        "-0.0",
                        "123456789012345678901234567890",
                        "1E+400",
                        "0.1",
                    ][r.random_range(0..5)];
                    b.extend(format!("{{\"question\": \"q\", \"answer\": {num}}}\n").as_bytes());
                }
                let f = d.join(format!("q{case}.jsonl"));
                std::fs::write(&f, &b).unwrap();
                bounded("question file", case, limit, move || {
                    if let Ok(ex) = ponder::recipes::data::read_examples(&f) {
                        for e in &ex {
                            let _ = ponder::recipes::answer::check(&e.prompt, &e.answer);
                        }
                    }
                    let _ = ponder::recipes::data::read_predictions(&f);
                    let _ = std::fs::remove_file(&f);
                })
            }
            1 => {
                // answers and completions
                let (c, g) = (fragment_text(&mut r, 40), fragment_text(&mut r, 6));
                bounded("answer", case, limit, move || {
                    let _ = ponder::recipes::answer::extract(&c);
                    let _ = ponder::recipes::answer::check(&c, &g);
                    let _ = ponder::recipes::answer::normalize(&g);
                    let _ = ponder::recipes::answer::gold_answer(&c);
                })
            }
            2 => {
                // calculator expressions, and the text they are forced after
                let e = fragment_text(&mut r, 12);
                let text = format!(
                    "{}<<{e}={}",
                    fragment_text(&mut r, 4),
                    fragment_text(&mut r, 2)
                );
                bounded("calculator", case, limit, move || {
                    if let Some(x) = ponder::recipes::calculator::eval_exact(&e) {
                        assert!(x.d > 0);
                        let _ = ponder::recipes::calculator::format_exact(x);
                    }
                    if let Some(f) = ponder::recipes::calculator::force_after(&text) {
                        assert!(f.ends_with('>'));
                    }
                })
            }
            3 => {
                // TPO thought templates
                let t = ponder::recipes::tpo::ThoughtTemplate {
                    text: fragment_text(&mut r, 20),
                    response_delimiter: fragment_text(&mut r, 3),
                    keep_delimiter: r.random_bool(0.5),
                };
                let out = fragment_text(&mut r, 20);
                bounded("tpo template", case, limit, move || {
                    if t.validate().is_ok() {
                        let p = t.render("What is 2 + 3?");
                        assert!(p.len() < 1 << 20);
                        let _ = t.split(&out);
                    }
                })
            }
            _ => {
                // a --resume state: rounds.jsonl and round-N/ beside it
                let out = d.join(format!("run{case}"));
                let mut b = rounds_src.as_bytes().to_vec();
                if r.random_bool(0.7) {
                    mutate_bytes(&mut b, &mut r);
                }
                if r.random_bool(0.3) {
                    let v = [1e308, -1e308, f64::MAX, f64::MIN_POSITIVE, 0.0, -0.0]
                        [r.random_range(0..6)];
                    b.extend(
                        format!(
                            "{{\"step\": 3, \"accuracy\": {v:e}, \"mean_tokens\": {:e}}}\n",
                            -v
                        )
                        .as_bytes(),
                    );
                }
                let row = {
                    let mut m = serde_json::Map::new();
                    m.insert("step".into(), json!(r.random_range(0..5)));
                    m.insert(
                        "accuracy".into(),
                        json!([1e308, -1e308, 0.5, 1e-300][r.random_range(0..4)]),
                    );
                    m.insert("mean_tokens".into(), json!(r.random::<f64>() * 1e300));
                    m
                };
                bounded("resume state", case, limit, move || {
                    {
                        let _first =
                            ponder::recipes::run::RunDir::open(&out, "tpo", false).unwrap();
                    }
                    std::fs::create_dir_all(out.join("round-1")).unwrap();
                    std::fs::write(out.join("rounds.jsonl"), &b).unwrap();
                    if let Ok(mut dir) = ponder::recipes::run::RunDir::open(&out, "tpo", true) {
                        let _ = dir.finish_round(row, &["accuracy", "mean_tokens"]);
                    }
                    let _ = std::fs::remove_dir_all(&out);
                })
            }
        };
        panics += (!ok) as usize;
    }
    let _ = std::fs::remove_dir_all(&d);
    eprintln!(
        "fuzz recipes: {n} cases (questions {}, answers {}, calculator {}, templates {}, resume states {}), {panics} panics or hangs",
        kinds[0], kinds[1], kinds[2], kinds[3], kinds[4]
    );
    assert_eq!(panics, 0, "seed {seed}: see PANIC/HANG lines above");
}
