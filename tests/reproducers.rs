//! One regression test per defect a fuzz run of the recipe surfaces found (data loss,
//! panics, silent wrong results, hangs): each reproducer is now an error with a message
//! that names what is wrong, or works. Every case runs the real binary, as a user would.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ponder-tiny")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("repro-{tag}"))
}

/// A path as a `&str` that lives for the test (leaked: a few bytes per call).
fn s(p: &Path) -> &'static str {
    Box::leak(p.to_str().unwrap().to_string().into_boxed_str())
}

/// Run ponder with a time limit: a hang fails the test instead of stalling it.
fn run(args: &[&str], limit_s: u64) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ponder");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(limit_s) {
            let _ = child.kill();
            panic!("ponder {args:?} still running after {limit_s} s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The run fails cleanly (exit 1, not a panic's 101 or an abort), saying `want`.
fn refused(args: &[&str], want: &str) -> String {
    let o = run(args, 120);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "ponder {args:?}: {err}");
    assert!(
        err.contains(want),
        "ponder {args:?}: expected {want:?} in:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn ok(args: &[&str]) -> String {
    let o = run(args, 600);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "ponder {args:?} failed:\n{text}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user's folder: a file and a subfolder with a file, all checked afterwards.
fn user_folder(d: &Path, names: &[&str]) -> PathBuf {
    std::fs::create_dir_all(d.join("sub")).unwrap();
    for n in names {
        if let Some(p) = Path::new(n).parent() {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        std::fs::write(d.join(n), format!("user's {n}")).unwrap();
    }
    std::fs::write(d.join("sub/keep.txt"), "mine").unwrap();
    d.to_path_buf()
}

fn assert_untouched(d: &Path, names: &[&str]) {
    for n in names {
        assert_eq!(
            std::fs::read_to_string(d.join(n)).unwrap(),
            format!("user's {n}"),
            "{n} was overwritten"
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.join("sub/keep.txt")).unwrap(),
        "mine"
    );
}

fn synth(d: &Path) -> PathBuf {
    let data = d.join("data");
    ok(&[
        "data",
        "synth",
        "--out",
        s(&data),
        "--n-train",
        "24",
        "--n-dev",
        "4",
        "--n-test",
        "4",
    ]);
    data
}

#[test]
fn demo_never_moves_deletes_or_mixes_a_folder() {
    let d = tmp("demo");
    // an earlier demo's folder and a user's folder named like its old backup
    let out = d.join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("summary.json"), "{}").unwrap();
    let prev = user_folder(&d.join("run.previous"), &["summary.json", "notes.txt"]);
    for _ in 0..2 {
        refused(&["demo", "--out", s(&out)], "is not empty");
    }
    assert_untouched(&prev, &["summary.json", "notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(out.join("summary.json")).unwrap(),
        "{}"
    );
    // a user's folder
    let user = user_folder(&d.join("user"), &["summary.json"]);
    refused(&["demo", "--out", s(&user)], "is not empty");
    assert_untouched(&user, &["summary.json"]);
    // sizes that wrapped around to one question
    refused(
        &[
            "demo",
            "--out",
            s(&d.join("new")),
            "--labelled",
            "18446744073709551615",
        ],
        "--labelled 18446744073709551615 is out of range",
    );
    refused(
        &["demo", "--out", s(&d.join("new")), "--rounds", "0"],
        "--rounds 0",
    );
    assert!(!d.join("new").exists(), "a refused demo wrote its --out");
    // the default --out moves on to a fresh numbered folder
    let base = d.join("runs/demo");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("summary.json"), "{}").unwrap();
    assert_eq!(
        ponder::recipes::demo::next_free_out(&base),
        d.join("runs/demo-2")
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_users_folder_is_never_an_output_directory() {
    let d = tmp("outdirs");
    let data = synth(&d);
    let m = models();
    let (short, long) = (m.join("sft-short"), m.join("sft-long"));
    let train = data.join("train-short.jsonl");
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec![
                "thinkpo",
                "--model",
                s(&long),
                "--data",
                s(&data.join("train-long.jsonl")),
                "--short-data",
                s(&train),
                "--out",
            ],
            &["pairs.jsonl", "model/config.json"],
        ),
        (
            vec![
                "self-train",
                "--model",
                s(&short),
                "--data",
                s(&train),
                "--out",
            ],
            &["round-1/pairs.jsonl", "rounds.jsonl"],
        ),
        (
            vec!["tpo", "--model", s(&short), "--data", s(&train), "--out"],
            &["round-1/pairs.jsonl", "rounds.jsonl"],
        ),
        (
            vec!["data", "synth", "--out"],
            &["corpus.txt", "train-short.jsonl"],
        ),
        (
            vec![
                "tokenizer",
                "train",
                "--files",
                s(&data.join("corpus.txt")),
                "--out",
            ],
            &["tokenizer.json"],
        ),
        (
            vec![
                "init",
                "--config",
                s(&short.join("config.json")),
                "--tokenizer",
                s(&short),
                "--out",
            ],
            &["config.json", "model.safetensors", "tokenizer.json"],
        ),
        (
            vec![
                "sft",
                "--model",
                s(&short),
                "--data",
                s(&train),
                "--steps",
                "1",
                "--out",
            ],
            &["metrics.jsonl", "config.json"],
        ),
    ];
    for (i, (mut args, names)) in cases.into_iter().enumerate() {
        let user = user_folder(&d.join(format!("user{i}")), names);
        let u = user.to_str().unwrap().to_string();
        args.push(&u);
        refused(&args, "not made by ponder");
        assert_untouched(&user, names);
        assert!(
            !user.join(".ponder.lock").exists(),
            "{args:?} left a lock file"
        );
    }
    // an output of another command is refused too; its own command may write it again
    let synth_out = d.join("data");
    refused(
        &[
            "tokenizer",
            "train",
            "--files",
            s(&data.join("corpus.txt")),
            "--out",
            s(&synth_out),
        ],
        "holds the output of `ponder data synth`",
    );
    ok(&[
        "data",
        "synth",
        "--out",
        s(&synth_out),
        "--n-train",
        "24",
        "--n-dev",
        "4",
        "--n-test",
        "4",
    ]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn save_deletes_only_stale_shards() {
    let d = tmp("save");
    let out = d.join("model");
    let src = fixture("qwen2-tied");
    ok(&["save", "--model", s(&src), "--out", s(&out)]);
    // a stale index naming the files the save writes, a user's file and a real shard
    std::fs::write(out.join("model-00001-of-00002.safetensors"), "old shard").unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(
        out.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "config.json", "b": "tokenizer.json", "c": "notes.txt",
            "d": "model-00001-of-00002.safetensors", "e": "../outside.txt"}}"#,
    )
    .unwrap();
    std::fs::write(d.join("outside.txt"), "outside").unwrap();
    ok(&["save", "--model", s(&src), "--out", s(&out)]);
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(out.join(f).is_file(), "{f} was deleted");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("outside.txt")).unwrap(),
        "outside"
    );
    assert!(!out.join("model-00001-of-00002.safetensors").exists());
    assert!(!out.join("model.safetensors.index.json").exists());
    ok(&["logits", "--model", s(&out), "--ids", "1,2,3"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eval_never_overwrites_its_inputs() {
    let d = tmp("eval");
    let data = synth(&d);
    let test = data.join("test-short.jsonl");
    let before = std::fs::read(&test).unwrap();
    refused(
        &[
            "eval",
            "--data",
            s(&test),
            "--predictions",
            s(&test),
            "--out",
            s(&test),
        ],
        "is also the --data input",
    );
    let preds = d.join("preds.jsonl");
    std::fs::write(&preds, "{\"completion\": \"#### 1\"}\n").unwrap();
    refused(
        &[
            "eval",
            "--data",
            s(&test),
            "--predictions",
            s(&preds),
            "--out",
            s(&preds),
        ],
        "is also the --predictions input",
    );
    assert_eq!(std::fs::read(&test).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(&preds).unwrap(),
        "{\"completion\": \"#### 1\"}\n"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn out_of_range_settings_are_errors_not_panics() {
    let d = tmp("ranges");
    let data = synth(&d);
    let m = models();
    let (short, long) = (m.join("sft-short"), m.join("sft-long"));
    let train = data.join("train-short.jsonl");
    let out = d.join("out");
    let o = s(&out);
    let st = [
        "self-train",
        "--model",
        s(&short),
        "--data",
        s(&train),
        "--out",
        o,
    ];
    let tp = [
        "thinkpo",
        "--model",
        s(&long),
        "--data",
        s(&data.join("train-long.jsonl")),
        "--short-data",
        s(&train),
        "--out",
        o,
    ];
    let tpo = ["tpo", "--model", s(&short), "--data", s(&train), "--out", o];
    let with = |base: &[&str], extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|x| x.to_string()).collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&st, &["--dpo-epochs", "inf"]), "--dpo-epochs inf"),
        (with(&st, &["--sft-epochs", "1e300"]), "--sft-epochs"),
        (with(&tp, &["--epochs", "inf"]), "--epochs inf"),
        (
            with(&tpo, &["--epochs-per-round", "1e300"]),
            "--epochs-per-round",
        ),
        (with(&st, &["--batch-size", "0"]), "--batch-size 0"),
        (with(&tp, &["--batch-size", "0"]), "--batch-size 0"),
        (with(&tpo, &["--batch-size", "0"]), "--batch-size 0"),
        (with(&st, &["--sft-lr", "1e30"]), "--sft-lr"),
        (with(&st, &["--dpo-lr=-1"]), "--dpo-lr -1"),
        (with(&tp, &["--lr", "NaN"]), "--lr NaN"),
        (with(&tpo, &["--lr", "inf"]), "--lr inf"),
        (with(&st, &["--rounds", "0"]), "--rounds 0"),
        (with(&tpo, &["--rounds", "0"]), "--rounds 0"),
        (with(&tpo, &["--rho", "nan"]), "--rho NaN"),
        (with(&tpo, &["--k", "1"]), "--k 1"),
        (with(&st, &["--k", "18446744073709551615"]), "--k"),
        (with(&st, &["--temperature", "nan"]), "--temperature"),
    ];
    for (args, want) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&a, want);
        assert!(!out.exists(), "{a:?} wrote its --out before refusing");
    }
    // an empty response delimiter, and a template repeating {instruction} without bound
    let tfile = d.join("template.txt");
    std::fs::write(&tfile, "Think. {instruction}").unwrap();
    refused(
        &with(&tpo, &["--template", s(&tfile), "--response-delimiter", ""])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "response delimiter",
    );
    std::fs::write(&tfile, "{instruction}".repeat(100_000)).unwrap();
    refused(
        &with(
            &tpo,
            &["--template", s(&tfile), "--response-delimiter", "R:"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        "at most 65536 are accepted",
    );
    std::fs::write(
        &tfile,
        "{instruction} {instruction} {instruction} {instruction} {instruction}",
    )
    .unwrap();
    refused(
        &with(
            &tpo,
            &["--template", s(&tfile), "--response-delimiter", "R:"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        "5 times",
    );
    // sft / dpo learning rates that can only diverge
    refused(
        &[
            "sft",
            "--model",
            s(&short),
            "--data",
            s(&train),
            "--out",
            o,
            "--lr",
            "1e10",
        ],
        "--lr 10000000000 is out of range",
    );
    let pairs = fixture("train/pairs.jsonl");
    refused(
        &[
            "dpo",
            "--model",
            s(&fixture("qwen2-tied")),
            "--data",
            s(&pairs),
            "--out",
            o,
            "--lr",
            "1e30",
        ],
        "is out of range",
    );
    // eval and bench sizes
    let test = data.join("test-short.jsonl");
    refused(
        &[
            "eval",
            "--model",
            s(&short),
            "--data",
            s(&test),
            "--samples",
            "18446744073709551615",
        ],
        "--samples",
    );
    refused(
        &[
            "bench",
            "dpo",
            "--model",
            s(&short),
            "--steps",
            "0",
            "--device",
            "cpu",
        ],
        "--steps 0",
    );
    refused(
        &[
            "bench", "matmul", "--m", "100000", "--n", "100000", "--k", "100000", "--device", "cpu",
        ],
        "choose smaller sizes",
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_shard_index_naming_a_fifo_is_refused_not_waited_on() {
    let d = tmp("fifo");
    let m = d.join("m");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("qwen2-tied").join(f), m.join(f)).unwrap();
    }
    let fifo = m.join("model-00001-of-00001.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo is not available");
        return;
    }
    std::fs::write(
        m.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    refused(
        &["logits", "--model", s(&m), "--ids", "1,2"],
        "not a regular file",
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_nan_weight_or_nan_logits_never_pass_silently() {
    let d = tmp("nan");
    // a checkpoint holding a NaN: refused on load, naming the tensor
    let m = d.join("m");
    ok(&["save", "--model", s(&fixture("qwen2-tied")), "--out", s(&m)]);
    let p = m.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, info) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() != "__metadata__")
        .unwrap();
    let start = 8 + n + info["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bad = bytes.clone();
    bad[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, &bad).unwrap();
    let err = refused(&["logits", "--model", s(&m), "--ids", "1,2"], "non-finite");
    assert!(err.contains(name.as_str()), "{err}");
    // finite weights whose logits overflow: the model is not saved
    let cfg = ponder::model::Config::load(&fixture("qwen2-tied")).unwrap();
    let mut net =
        ponder::model::Transformer::random(&cfg, ponder::Device::Cpu, ponder::DType::F32, 3)
            .unwrap();
    for (_, t) in net.trainable_mut(false).unwrap() {
        let big = ponder::autograd::no_grad(|| t.scale(1e30)).unwrap();
        *t = big;
    }
    let err = ponder::model::save::save_model(&net, None, &d.join("huge"), ponder::DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN or infinite"), "{err}");
    assert!(!d.join("huge/model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn answers_keep_their_exact_text_and_long_hash_runs_are_fast() {
    let d = tmp("answers");
    let data = d.join("q.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"a\", \"answer\": 1e20}\n{\"question\": \"b\", \"answer\": 123456789012345678901234567891}\n",
    )
    .unwrap();
    let ex = ponder::recipes::data::read_examples(&data).unwrap();
    assert_eq!(ex[0].answer, "1e20");
    assert_eq!(ex[1].answer, "123456789012345678901234567891");
    let preds = d.join("p.jsonl");
    std::fs::write(
        &preds,
        "{\"completion\": \"#### 1e20\"}\n{\"completion\": \"#### 123456789012345678901234567891\"}\n",
    )
    .unwrap();
    let out = ok(&[
        "eval",
        "--data",
        s(&data),
        "--predictions",
        s(&preds),
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["accuracy"].as_f64(), Some(1.0), "{out}");
    // a 1 MB run of '#' (88 s before: quadratic extraction)
    let long = format!("{{\"completion\": \"{}\"}}\n", "#".repeat(1 << 20));
    std::fs::write(&preds, format!("{long}{long}")).unwrap();
    let t0 = Instant::now();
    ok(&["eval", "--data", s(&data), "--predictions", s(&preds)]);
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_killed_recipes_temporary_files_are_removed() {
    let d = tmp("temps");
    let out = d.join("out");
    {
        let _run = ponder::recipes::run::RunDir::open(&out, "tpo", false).unwrap();
    }
    // what a killed run leaves: temporary files of a process that is gone
    std::fs::create_dir_all(out.join("round-1/model")).unwrap();
    let dead = ".model.safetensors.4000000000-3-0badcafe.tmp";
    for dir in [out.clone(), out.join("round-1"), out.join("round-1/model")] {
        std::fs::write(dir.join(dead), "partial").unwrap();
    }
    std::fs::write(out.join("notes.tmp"), "not ours").unwrap();
    let _run = ponder::recipes::run::RunDir::open(&out, "tpo", true).unwrap();
    for dir in [out.clone(), out.join("round-1"), out.join("round-1/model")] {
        assert!(!dir.join(dead).exists(), "{}", dir.display());
    }
    assert!(out.join("notes.tmp").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_resumed_self_train_reports_each_round_by_its_number() {
    let d = tmp("resume");
    let data = synth(&d);
    let m = models();
    let out = d.join("st");
    let args = |rounds: &'static str, resume: bool| -> Vec<String> {
        let mut a: Vec<String> = [
            "self-train",
            "--model",
            s(&m.join("sft-short")),
            "--data",
            s(&data.join("train-short.jsonl")),
            "--eval-data",
            s(&data.join("test-short.jsonl")),
            "--out",
            s(&out),
            "--rounds",
            rounds,
            "--no-dpo",
            "--limit",
            "6",
            "--k",
            "1",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "8",
            "--quiet",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let first = ok(&args("1", false)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(first.contains("round 1: accuracy"), "{first}");
    let second = ok(&args("2", true)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let lines: Vec<&str> = second.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(lines.len(), 2, "{second}");
    assert!(
        lines[0].starts_with("round 1:") && lines[1].starts_with("round 2:"),
        "{second}"
    );
    // --max-new-tokens bounds the evaluation too: no completion longer than 8 tokens
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &rows {
        if let Some(t) = r.get("mean_tokens").and_then(|v| v.as_f64()) {
            assert!(t <= 8.0, "{r}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn thinkpo_never_suggests_a_flag_it_rejects() {
    let d = tmp("thinkpo");
    let out = d.join("out");
    {
        let _r = ponder::recipes::run::RunDir::open(&out, "thinkpo", false).unwrap();
    }
    std::fs::write(out.join("rounds.jsonl"), "{\"step\": 1}\n").unwrap();
    let err = match ponder::recipes::run::RunDir::open(&out, "thinkpo", false) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a finished thinkpo run was reopened"),
    };
    assert!(!err.contains("--resume"), "{err}");
    assert!(err.contains("choose another --out"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn second_round_reproducers_found_by_review() {
    let d = tmp("review");
    let data = synth(&d);
    let m = models();
    let base = m.join("base");
    // --metrics naming the training data
    let mine = d.join("mine.jsonl");
    std::fs::copy(fixture("train/sft.jsonl"), &mine).unwrap();
    let before = std::fs::read(&mine).unwrap();
    refused(
        &[
            "sft",
            "--model",
            s(&base),
            "--data",
            s(&mine),
            "--out",
            s(&d.join("o1")),
            "--metrics",
            s(&mine),
            "--steps",
            "1",
        ],
        "is also the --data input",
    );
    assert_eq!(std::fs::read(&mine).unwrap(), before);
    // eval --out inside the model folder
    let copy = d.join("model");
    ok(&["save", "--model", s(&base), "--out", s(&copy)]);
    refused(
        &[
            "eval",
            "--model",
            s(&copy),
            "--data",
            s(&data.join("test-short.jsonl")),
            "--limit",
            "1",
            "--out",
            s(&copy.join("model.safetensors")),
        ],
        "is inside the --model directory",
    );
    ok(&["logits", "--model", s(&copy), "--ids", "1,2"]);
    // a --min-lr above --lr
    refused(
        &[
            "sft",
            "--model",
            s(&base),
            "--data",
            s(&mine),
            "--out",
            s(&d.join("o2")),
            "--lr-scheduler",
            "cosine-with-min-lr",
            "--min-lr",
            "1e4",
        ],
        "--min-lr",
    );
    // --reps without bound
    refused(
        &[
            "bench",
            "matmul",
            "--m",
            "1",
            "--n",
            "1",
            "--k",
            "1",
            "--reps",
            "18446744073709551615",
            "--device",
            "cpu",
        ],
        "--reps",
    );
    // a round folder that is a link into a user's folder
    let user = user_folder(&d.join("user"), &["pairs.jsonl"]);
    let out = d.join("st");
    {
        let _r = ponder::recipes::run::RunDir::open(&out, "self-train", false).unwrap();
    }
    std::os::unix::fs::symlink(&user, out.join("round-1")).unwrap();
    let err = match ponder::recipes::run::RunDir::open(&out, "self-train", true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a linked round folder was accepted"),
    };
    assert!(err.contains("symbolic link"), "{err}");
    assert_untouched(&user, &["pairs.jsonl"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn damaged_checkpoint_steps_and_oversized_inits_are_refused() {
    let d = tmp("ckpt");
    let base = models().join("base");
    let data = fixture("train/sft.jsonl");
    let out = d.join("ck");
    ok(&[
        "sft",
        "--model",
        s(&base),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--steps",
        "4",
        "--batch-size",
        "1",
        "--save-every",
        "2",
        "--quiet",
    ]);
    let ck = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("checkpoint-")
        })
        .expect("a checkpoint");
    let sp = ck.join("state.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    st["step"] = serde_json::json!(100);
    std::fs::write(&sp, st.to_string()).unwrap();
    let again = d.join("again");
    refused(
        &[
            "sft",
            "--model",
            s(&base),
            "--data",
            s(&data),
            "--out",
            s(&again),
            "--steps",
            "4",
            "--batch-size",
            "1",
            "--resume",
            s(&ck),
            "--quiet",
        ],
        "the checkpoint is damaged",
    );
    // every dimension in range, the product not
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = serde_json::json!(1_000_000);
    let cf = d.join("big.json");
    std::fs::write(&cf, cfg.to_string()).unwrap();
    refused(
        &[
            "init",
            "--config",
            s(&cf),
            "--tokenizer",
            s(&base),
            "--out",
            s(&d.join("big")),
        ],
        "choose smaller sizes",
    );
    let _ = std::fs::remove_dir_all(&d);
}
