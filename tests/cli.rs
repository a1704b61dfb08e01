//! The command line as a user types it.

mod common;
use std::process::Command;

fn ponder(args: &[&str]) -> (bool, String) {
    let (ok, stdout, stderr) = ponder_env(args, &[]);
    (ok, format!("{stdout}{stderr}"))
}

/// Run ponder with environment variables set (`Some`) or removed (`None`): whether it
/// succeeded, its stdout and its stderr.
fn ponder_env(args: &[&str], env: &[(&str, Option<&str>)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ponder"));
    cmd.args(args);
    for &(k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run ponder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn info_reports_device_and_self_check() {
    let (ok, out) = ponder(&["info"]);
    assert!(ok, "{out}");
    assert!(out.contains("device:"), "{out}");
    if common::gpu_ok("cli info") {
        let soft = ponder::backend::gpu::context().unwrap().is_software();
        // auto never picks a software rasteriser (lavapipe) over the cpu loops
        if soft {
            assert!(out.contains("device: cpu (requested: auto)"), "{out}");
            assert!(out.contains("auto chose the cpu"), "{out}");
        } else {
            assert!(out.contains("device: gpu (requested: auto)"), "{out}");
        }
        let (ok, out) = ponder(&["info", "--device", "gpu"]);
        assert!(ok, "{out}");
        assert!(out.contains("device: gpu"), "{out}");
        let checks_on = std::env::var("PONDER_SHADER_CHECKS").is_ok_and(|v| v == "1");
        let want = if checks_on {
            "naga runtime checks: on"
        } else {
            "naga runtime checks: off"
        };
        assert!(out.contains(want), "{out}");
        assert!(
            out.contains("gpu adapter:") && out.contains("chosen because"),
            "{out}"
        );
        assert!(out.contains("max_storage_buffer_binding_size"), "{out}");
        assert!(out.contains("self-check: all kernels agree"), "{out}");
    }
    let (ok, out) = ponder(&["info", "--device", "cpu"]);
    assert!(ok && out.contains("device: cpu"), "{out}");
    let (ok, out) = ponder(&["info", "--device", "tpu"]);
    assert!(!ok && out.contains("unknown device 'tpu'"), "{out}");
}

#[test]
fn bench_prints_gflops() {
    let (ok, out) = ponder(&[
        "bench", "matmul", "--device", "cpu", "--m", "64", "--n", "33", "--k", "70", "--reps", "3",
    ]);
    assert!(
        ok && out.contains("matmul 64x33x70 on cpu") && out.contains("GFLOP/s"),
        "{out}"
    );
    let (ok, out) = ponder(&[
        "bench",
        "attention",
        "--device",
        "cpu",
        "--t",
        "16",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--head-dim",
        "8",
        "--reps",
        "2",
    ]);
    assert!(
        ok && out.contains("attention fwd") && out.contains("GFLOP/s"),
        "{out}"
    );
    if common::gpu_ok("cli bench") {
        let (ok, out) = ponder(&[
            "bench", "matmul", "--device", "gpu", "--m", "65", "--n", "33", "--k", "17", "--reps",
            "2",
        ]);
        assert!(ok && out.contains("on gpu"), "{out}");
        let (ok, out) = ponder(&[
            "bench",
            "attention",
            "--device",
            "gpu",
            "--t",
            "16",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--head-dim",
            "8",
            "--backward",
            "--reps",
            "2",
        ]);
        assert!(ok && out.contains("attention bwd"), "{out}");
    }
}

#[test]
fn bench_dpo_profile_prints_the_kernel_table_without_mesa_noise() {
    if !common::gpu_ok("cli bench dpo --profile") {
        return;
    }
    // one DPO step of the bundled tiny model, profiled
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/ponder-tiny/base");
    let dpo = |extra: &[&'static str]| -> Vec<&str> {
        let mut a = vec![
            "bench",
            "dpo",
            "--model",
            model,
            "--device",
            "gpu",
            "--pairs",
            "1",
            "--prompt-len",
            "8",
            "--completion-len",
            "8",
            "--steps",
            "1",
            "--profile",
        ];
        a.extend(extra);
        a
    };
    // as a user's shell may have it: no XDG_RUNTIME_DIR, which Mesa's loader warns about
    let (ok, stdout, stderr) = ponder_env(&dpo(&[]), &[("XDG_RUNTIME_DIR", None)]);
    assert!(ok, "{stdout}{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    let text = format!("{stdout}{stderr}");
    for col in [
        "shader:entry",
        "count",
        "total ms",
        "mean us",
        "% gpu",
        "GFLOP/s",
        "GB/s",
    ] {
        assert!(text.contains(col), "no column {col:?}:\n{text}");
    }
    for kernel in ["matmul:gemm", "attention:attn_fwd", "adamw:adamw"] {
        assert!(text.contains(kernel), "no row {kernel}:\n{text}");
    }
    for counter in ["dispatches", "submits", "readbacks 1;", "host recording"] {
        assert!(text.contains(counter), "no {counter:?}:\n{text}");
    }
    // uploads (ids, masks, reference sums) ride in the pending encoder: the step submits
    // its work in a couple of batches, not once per upload
    let submits: Vec<usize> = text
        .split("submits ")
        .skip(1)
        .map(|t| {
            t.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !submits.is_empty() && submits.iter().all(|&n| n <= 3),
        "submits per step {submits:?}:\n{text}"
    );
    // with timestamps, GPU busy and idle time; without, it says so
    let has_timestamps = ponder::backend::gpu::context()
        .unwrap()
        .features
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    if has_timestamps {
        assert!(
            text.contains("GPU busy") && text.contains("GPU idle"),
            "{text}"
        );
    } else {
        assert!(text.contains("host timings only"), "{text}");
    }
    // a live (frozen bf16) reference in every step: still one readback, after the update
    let (ok, text) = ponder(&dpo(&["--no-ref-cache"]));
    assert!(ok, "{text}");
    assert!(
        text.contains("readbacks 1;") && !text.contains("readbacks 2"),
        "{text}"
    );
    // an adapter without timestamp queries: it says so and times on the host
    let (ok, stdout, stderr) = ponder_env(
        &[
            "bench",
            "matmul",
            "--device",
            "gpu",
            "--m",
            "65",
            "--n",
            "33",
            "--k",
            "17",
            "--reps",
            "2",
            "--profile",
        ],
        &[("PONDER_NO_TIMESTAMPS", Some("1"))],
    );
    let text = format!("{stdout}{stderr}");
    assert!(ok, "{text}");
    assert!(
        text.contains("no timestamp queries") && text.contains("host timings only"),
        "{text}"
    );
    assert!(text.contains("matmul:gemm"), "{text}");
}

/// A path inside the repository, as text.
fn repo(rel: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// `eval --limit 0` would evaluate nothing and print a table of dashes: it is refused,
/// naming the flag and the accepted range.
#[test]
fn eval_refuses_a_limit_of_zero() {
    let (ok, out) = ponder(&[
        "eval",
        "--model",
        &repo("models/ponder-tiny/sft-short"),
        "--data",
        "unused.jsonl",
        "--limit",
        "0",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("--limit") && out.contains("1.."), "{out}");
}

/// `bench dpo` refuses pairs longer than the model's positions, naming the flags, and
/// takes length ranges and padding-free batches.
#[test]
fn bench_dpo_checks_lengths_and_takes_ranges() {
    let m = &repo("models/fixtures/qwen2-tied");
    let (ok, out) = ponder(&[
        "bench",
        "dpo",
        "--model",
        m,
        "--device",
        "cpu",
        "--prompt-len",
        "8",
        "--completion-len",
        "100000",
        "--steps",
        "1",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("max_position_embeddings") && out.contains("--completion-len"),
        "{out}"
    );
    let (ok, out) = ponder(&[
        "bench",
        "dpo",
        "--model",
        m,
        "--device",
        "cpu",
        "--pairs",
        "3",
        "--prompt-len",
        "4",
        "--chosen-len",
        "10,30",
        "--rejected-len",
        "2,5",
        "--padding-free",
        "--steps",
        "1",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 pairs") && out.contains("padding-free"),
        "{out}"
    );
}

/// `tpo --response-delimiter` with a built-in template would be silently ignored: it is
/// refused, naming the template.
#[test]
fn tpo_refuses_a_delimiter_with_a_builtin_template() {
    let (ok, out) = ponder(&[
        "tpo",
        "--model",
        &repo("models/ponder-tiny/sft-short"),
        "--data",
        "unused.jsonl",
        "--out",
        std::env::temp_dir()
            .join("ponder-tpo-delim-unused")
            .to_str()
            .unwrap(),
        "--template",
        "specific",
        "--response-delimiter",
        "ANSWER:",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("--response-delimiter") && out.contains("`specific`"),
        "{out}"
    );
    assert!(!std::env::temp_dir()
        .join("ponder-tpo-delim-unused")
        .exists());
}
