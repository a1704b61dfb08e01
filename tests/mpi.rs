//! Data parallelism over MPI, end to end as a user types it: `mpirun -np 2 ponder ...`
//! against one process doing the same work (`--grad-accum 2` for training).
//!
//! The 2-rank runs need a ponder built with `--features mpi`, named by `PONDER_MPI_BIN`
//! (`.ci/run` builds one), and Open MPI's `mpirun`. Without them each test skips with the
//! reason printed; with CI=true it fails instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn skip(test: &str, why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; CI=true requires it");
    }
    eprintln!("skipping {test}: {why}");
    false
}

fn have_mpirun() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The MPI-enabled binary, when this machine can run 2 ranks.
fn mpi_bin(test: &str) -> Option<PathBuf> {
    if !have_mpirun() {
        skip(test, "mpirun not found (install openmpi-bin)");
        return None;
    }
    match std::env::var_os("PONDER_MPI_BIN").map(PathBuf::from) {
        Some(p) if p.exists() => Some(p),
        Some(p) => {
            skip(
                test,
                &format!("PONDER_MPI_BIN={} does not exist", p.display()),
            );
            None
        }
        None => {
            skip(
                test,
                "PONDER_MPI_BIN is unset (build with `cargo build --profile test --features mpi` and point it at the binary)",
            );
            None
        }
    }
}

/// Run a command to its end or fail the test after `limit`: a job that hangs is a
/// failure, not a stuck test run. (success, stdout then stderr)
fn run(mut cmd: Command, limit: Duration) -> (bool, String) {
    let out_path = std::env::temp_dir().join(format!(
        "ponder-mpi-test-{}-{:?}.log",
        std::process::id(),
        std::thread::current().id()
    ));
    let log = std::fs::File::create(&out_path).unwrap();
    let mut child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the command");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            panic!("still running after {limit:?}, killed: {cmd:?}\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    (status.success(), text)
}

/// `mpirun` with what a root CI container and an oversubscribed 2-core machine need.
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

/// `mpirun -np N bin args...`
fn ranks(n: usize, bin: &Path, args: &[&str]) -> (bool, String) {
    let mut c = mpirun();
    c.arg("-np").arg(n.to_string()).arg(bin).args(args);
    run(c, Duration::from_secs(600))
}

/// One process, no launcher.
fn alone(bin: &Path, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(bin);
    c.args(args);
    run(c, Duration::from_secs(600))
}

fn jsonl(p: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every f32 tensor of a safetensors file, by name.
fn weights(p: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            let x = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (n, x)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Two training runs' metrics (every numeric key but the speed) and final weights agree
/// to `tol`, relative to the value's size where that is above 1.
fn same_run(a: &Path, b: &Path, weights_file: &str, tol: f64) {
    let (ma, mb) = (
        jsonl(&a.join("metrics.jsonl")),
        jsonl(&b.join("metrics.jsonl")),
    );
    assert_eq!(ma.len(), mb.len(), "steps logged");
    assert!(!ma.is_empty());
    for (ra, rb) in ma.iter().zip(&mb) {
        for (k, va) in ra {
            if k == "tokens_per_second" {
                continue;
            }
            let (Some(x), Some(y)) = (va.as_f64(), rb.get(k).and_then(Value::as_f64)) else {
                continue;
            };
            let d = (x - y).abs() / x.abs().max(1.0);
            assert!(d <= tol, "step {}: {k} {x} vs {y} (diff {d:e})", ra["step"]);
        }
    }
    let (wa, wb) = (
        weights(&a.join(weights_file)),
        weights(&b.join(weights_file)),
    );
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0.0f64;
    for ((na, xa), (nb, xb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        for (p, q) in xa.iter().zip(xb) {
            worst = worst.max((p - q).abs() as f64);
        }
    }
    assert!(worst <= tol, "final weights differ by {worst:e}");
    eprintln!(
        "{}: metrics and weights within {tol:e} (weights max diff {worst:e})",
        b.display()
    );
}

/// `ponder dpo` of the bundled tiny model on the fixture pairs, on `device`, into
/// `d/tag` with a reference cache of its own, then `extra`.
fn dpo_args(d: &Path, tag: &str, device: &str, extra: &[&str]) -> Vec<String> {
    let model = repo("models/ponder-tiny/base");
    let data = repo("models/fixtures/train/arith_pairs.jsonl");
    let mut a: Vec<String> = vec![
        "dpo".into(),
        "--model".into(),
        model.display().to_string(),
        "--data".into(),
        data.display().to_string(),
        "--device".into(),
        device.into(),
        "--quiet".into(),
        "--out".into(),
        d.join(tag).display().to_string(),
        "--ref-cache".into(),
        d.join(format!("{tag}.logps")).display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn dpo_on_two_ranks_equals_one_process_with_grad_accum() {
    let Some(bin) = mpi_bin("dpo_on_two_ranks") else {
        return;
    };
    let d = common::scratch("mpi-dpo");
    // full fine-tuning on a cached reference, and LoRA with the adapters-off live reference
    for (name, extra, file) in [
        ("full", vec![], "model.safetensors"),
        (
            "lora",
            vec!["--lora-r", "4", "--no-ref-cache", "--lr", "1e-3"],
            "adapter_model.safetensors",
        ),
    ] {
        let (one, two) = (format!("{name}-one"), format!("{name}-two"));
        let mut a = extra.clone();
        a.extend(["--batch-size", "3", "--steps", "3"]);
        let mut one_args = a.clone();
        one_args.extend(["--grad-accum", "2"]);
        let (ok, text_one) = alone(&bin, &strs(&dpo_args(&d, &one, "cpu", &one_args)));
        assert!(ok, "{text_one}");
        let (ok, text) = ranks(2, &bin, &strs(&dpo_args(&d, &two, "cpu", &a)));
        assert!(ok, "{text}");
        assert!(text.contains("over 2 MPI ranks"), "{text}");
        // the reference passes of both ranks, each counted once (cache build or live)
        let passes = |t: &str| {
            let at = t.find("reference forwards ").expect("the summary line") + 19;
            t[at..]
                .split([',', '\n'])
                .next()
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(passes(&text), passes(&text_one), "{text}");
        same_run(&d.join(&one), &d.join(&two), file, 1e-6);
    }
    // the reference cache was computed half on each rank and written whole by rank 0
    assert_eq!(
        std::fs::read(d.join("full-one.logps")).unwrap(),
        std::fs::read(d.join("full-two.logps")).unwrap(),
        "sharded reference cache"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sft_on_two_ranks_equals_one_process_with_grad_accum() {
    let Some(bin) = mpi_bin("sft_on_two_ranks") else {
        return;
    };
    let d = common::scratch("mpi-sft");
    // SFT examples: the fixture pairs' prompts with their chosen answers
    let data = d.join("sft.jsonl");
    let rows: Vec<String> = jsonl(&repo("models/fixtures/train/arith_pairs.jsonl"))
        .iter()
        .map(|r| serde_json::json!({"prompt": r["prompt"], "completion": r["chosen"]}).to_string())
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let model = repo("models/ponder-tiny/base");
    let args = |out: &Path| -> Vec<String> {
        [
            "sft",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--batch-size",
            "5",
            "--steps",
            "4",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let one = args(&d.join("one"));
    let mut one: Vec<&str> = one.iter().map(String::as_str).collect();
    one.extend(["--grad-accum", "2"]);
    let (ok, text) = alone(&bin, &one);
    assert!(ok, "{text}");
    let two = args(&d.join("two"));
    let two: Vec<&str> = two.iter().map(String::as_str).collect();
    let (ok, text) = ranks(2, &bin, &two);
    assert!(ok, "{text}");
    same_run(&d.join("one"), &d.join("two"), "model.safetensors", 1e-6);
    let _ = std::fs::remove_dir_all(&d);
}

/// The numbers of a recipe round that sharding must not change.
fn round_counts(out: &Path) -> Vec<Vec<Option<f64>>> {
    jsonl(&out.join("rounds.jsonl"))
        .iter()
        .map(|r| {
            [
                "accuracy",
                "mean_tokens",
                "dpo_pairs",
                "new_positives",
                "positives",
                "calculator_calls",
            ]
            .iter()
            .map(|k| r.get(*k).and_then(Value::as_f64))
            .collect()
        })
        .collect()
}

#[test]
fn self_train_on_two_ranks_gives_the_single_process_rounds_and_resumes_with_any_count() {
    let Some(bin) = mpi_bin("self_train_on_two_ranks") else {
        return;
    };
    let d = common::scratch("mpi-st");
    let data = d.join("data");
    let (ok, text) = alone(
        &bin,
        &[
            "data",
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--n-train",
            "40",
            "--n-dev",
            "8",
            "--n-test",
            "8",
            "--seed",
            "5",
        ],
    );
    assert!(ok, "{text}");
    let m = repo("models/ponder-tiny");
    let args = |out: &Path, rounds: &str| -> Vec<String> {
        [
            "self-train",
            "--model",
            m.join("sft-short").to_str().unwrap(),
            "--base",
            m.join("base").to_str().unwrap(),
            "--data",
            data.join("train-short.jsonl").to_str().unwrap(),
            "--eval-data",
            data.join("test-short.jsonl").to_str().unwrap(),
            "--rounds",
            rounds,
            "--limit",
            "12",
            "--k",
            "2",
            "--max-new-tokens",
            "120",
            "--dpo-lr",
            "1e-5",
            "--sft-lr",
            "1e-4",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let strs = |v: &[String]| v.iter().map(String::clone).collect::<Vec<_>>();
    // one process, two rounds
    let a = strs(&args(&d.join("one"), "2"));
    let (ok, text) = alone(&bin, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{text}");
    // two ranks for round 1, then one process resumes for round 2
    let b = strs(&args(&d.join("two"), "1"));
    let (ok, text) = ranks(2, &bin, &b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{text}");
    assert!(text.contains("round 1: accuracy"), "{text}");
    let one = round_counts(&d.join("one"));
    assert_eq!(round_counts(&d.join("two")), one[..1], "round 1");
    let mut c = strs(&args(&d.join("two"), "2"));
    c.push("--resume".into());
    let (ok, text) = alone(&bin, &c.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{text}");
    assert_eq!(round_counts(&d.join("two")), one, "after the resume");
    assert!(
        one[0][2].unwrap_or(0.0) > 0.0,
        "round 1 made DPO pairs: {one:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_rank_that_dies_or_fails_ends_the_job_with_a_message() {
    let Some(bin) = mpi_bin("a_rank_that_dies") else {
        return;
    };
    let d = common::scratch("mpi-fault");
    let steps = ["--batch-size", "2", "--steps", "20"];
    // rank 1 dies by a signal at its third step, while rank 0 carries on into the next
    // all-reduce (MPMD: each rank its own environment)
    let args = dpo_args(&d, "dies", "cpu", &steps);
    let mut c = mpirun();
    c.args(["-np", "1"])
        .arg(&bin)
        .args(&args)
        .args([":", "-np", "1", "-x", "PONDER_TEST_KILL_AT=step-logged:3"])
        .arg(&bin)
        .args(&args);
    let t0 = Instant::now();
    let (ok, text) = run(c, Duration::from_secs(120));
    assert!(!ok, "{text}");
    assert!(text.contains("failpoint step-logged:3"), "{text}");
    assert!(
        text.contains("exited on signal") || text.contains("aborted") || text.contains("signal"),
        "mpirun names the rank that died: {text}"
    );
    eprintln!("a dead rank ended the job after {:?}", t0.elapsed());
    // rank 1 fails with an error (its data file is missing) while rank 0 waits for it
    let args = dpo_args(&d, "fails", "cpu", &steps);
    let mut missing = args.clone();
    let at = missing.iter().position(|a| a == "--data").unwrap() + 1;
    missing[at] = d.join("missing.jsonl").display().to_string();
    let mut c = mpirun();
    c.args(["-np", "1"])
        .arg(&bin)
        .args(&args)
        .args([":", "-np", "1"])
        .arg(&bin)
        .args(&missing);
    let (ok, text) = run(c, Duration::from_secs(120));
    assert!(!ok, "{text}");
    assert!(
        text.contains("rank 1") && text.contains("missing.jsonl"),
        "the error names the rank and the file: {text}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    if !have_mpirun() {
        skip(
            "a_build_without_mpi",
            "mpirun not found (install openmpi-bin)",
        );
        return;
    }
    if cfg!(feature = "mpi") {
        eprintln!("skipping a_build_without_mpi: this test binary was built with the mpi feature");
        return;
    }
    let mut c = mpirun();
    c.args([
        "-np",
        "2",
        env!("CARGO_BIN_EXE_ponder"),
        "info",
        "--device",
        "cpu",
    ]);
    let (ok, text) = run(c, Duration::from_secs(120));
    assert!(!ok, "{text}");
    assert!(
        text.contains("built without MPI") && text.contains("--features mpi"),
        "{text}"
    );
}

/// Each rank on its own GPU adapter (lavapipe in CI: both ranks share it): gradients are
/// read back, summed through host memory and written back before the arena's AdamW.
#[test]
fn dpo_on_two_gpu_ranks_equals_one_gpu_process_with_grad_accum() {
    if !common::gpu_ok("dpo_on_two_gpu_ranks") {
        return;
    }
    let Some(bin) = mpi_bin("dpo_on_two_gpu_ranks") else {
        return;
    };
    let d = common::scratch("mpi-dpo-gpu");
    let steps = ["--batch-size", "2", "--steps", "2"];
    let mut one = steps.to_vec();
    one.extend(["--grad-accum", "2"]);
    let (ok, text) = alone(&bin, &strs(&dpo_args(&d, "one", "gpu", &one)));
    assert!(ok, "{text}");
    let (ok, text) = ranks(2, &bin, &strs(&dpo_args(&d, "two", "gpu", &steps)));
    assert!(ok, "{text}");
    same_run(&d.join("one"), &d.join("two"), "model.safetensors", 1e-5);
    let _ = std::fs::remove_dir_all(&d);
}

/// A 2-rank DPO run killed after its last checkpoint resumes in one process (with
/// --grad-accum 2) onto exactly the trajectory of an uninterrupted one-process run.
#[test]
fn a_killed_two_rank_run_resumes_in_one_process() {
    let Some(bin) = mpi_bin("a_killed_two_rank_run_resumes") else {
        return;
    };
    let d = common::scratch("mpi-resume");
    let steps = ["--batch-size", "2", "--steps", "5", "--save-every", "2"];
    let mut one = steps.to_vec();
    one.extend(["--grad-accum", "2"]);
    let (ok, text) = alone(&bin, &strs(&dpo_args(&d, "one", "cpu", &one)));
    assert!(ok, "{text}");
    // both ranks abort once step 4 is logged: checkpoint-2 is the last one
    let mut c = mpirun();
    c.args(["-np", "2", "-x", "PONDER_TEST_KILL_AT=step-logged:4"])
        .arg(&bin)
        .args(dpo_args(&d, "two", "cpu", &steps));
    let (ok, text) = run(c, Duration::from_secs(300));
    assert!(!ok, "{text}");
    assert!(d.join("two/checkpoint-2").is_dir(), "{text}");
    let out_two = d.join("two").display().to_string();
    one.extend(["--resume", &out_two]);
    let (ok, text) = alone(&bin, &strs(&dpo_args(&d, "two", "cpu", &one)));
    assert!(ok, "{text}");
    assert!(text.contains("resumed from"), "{text}");
    same_run(&d.join("one"), &d.join("two"), "model.safetensors", 1e-6);
    let _ = std::fs::remove_dir_all(&d);
}
