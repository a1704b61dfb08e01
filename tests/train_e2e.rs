//! Training end to end: DPO learns on a few dozen pairs; the reference cache is hit, found
//! stale or corrupt and rebuilt; LoRA trains and saves a PEFT adapter; a run killed with
//! SIGKILL (at timed points, and at exact ones by fault injection: start-up, the metrics
//! rewrite, publishing, pruning, the final save) and resumed logs the same losses as one
//! never interrupted; --config mirrors
//! the flags; bad data lines are reported with file and line.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

use ponder::train::metrics;
use ponder::train::trainer::{train, Mode, TrainArgs};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("e2e-{tag}"))
}

fn dpo_args(out: &Path, cache: &Path) -> TrainArgs {
    let (m, d) = (
        root().join("qwen2-tied"),
        root().join("train/arith_pairs.jsonl"),
    );
    #[rustfmt::skip]
    let flags = ["--model", m.to_str().unwrap(), "--data", d.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--lr", "5e-3", "--batch-size", "8", "--epochs", "2", "--lr-scheduler", "cosine", "--warmup-ratio", "0.1",
        "--device", "cpu", "--quiet", "--ref-cache", cache.to_str().unwrap()];
    TrainArgs::from_flags(&flags).unwrap()
}

fn column(out: &Path, k: &str) -> Vec<f64> {
    metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r[k].as_f64().unwrap())
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn dpo_learns_and_the_reference_cache_is_reused() {
    let dir = tmp("learn");
    let cache = dir.join("ref.logps");
    let a = dpo_args(&dir.join("run1"), &cache);
    let s1 = train(Mode::Dpo, &a).unwrap();
    assert!(
        s1.ref_forwards > 0 && s1.cache.as_deref().unwrap().starts_with("built"),
        "{:?}",
        s1.cache
    );
    let loss = column(&a.out, "loss");
    let acc = column(&a.out, "rewards/accuracies");
    assert_eq!(loss.len(), 12);
    // policy = reference at step 1: zero margins, loss log 2
    assert!(
        (loss[0] - std::f64::consts::LN_2).abs() < 1e-6 && acc[0] == 0.0,
        "step 1: loss {} accuracy {}",
        loss[0],
        acc[0]
    );
    assert!(
        mean(&loss[9..]) < 0.5 * mean(&loss[..3]),
        "loss did not fall: {loss:?}"
    );
    assert!(
        mean(&acc[9..]) >= 0.9 && mean(&acc[9..]) > mean(&acc[..3]),
        "accuracies did not rise: {acc:?}"
    );
    assert!(column(&a.out, "rewards/margins").last().unwrap() > &0.5);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "metrics.svg",
    ] {
        assert!(a.out.join(f).exists(), "{f} missing");
    }
    // a second run over the same data hits the cache: no reference forward at all
    let b = dpo_args(&dir.join("run2"), &cache);
    let s2 = train(Mode::Dpo, &b).unwrap();
    assert_eq!(s2.ref_forwards, 0);
    assert!(
        s2.cache.as_deref().unwrap().starts_with("hit"),
        "{:?}",
        s2.cache
    );
    assert_eq!(
        column(&b.out, "loss"),
        loss,
        "cached run differs from the first run"
    );
    // other truncation settings make the file stale; a flipped byte makes it corrupt
    let mut c = dpo_args(&dir.join("run3"), &cache);
    c.max_prompt_length = Some(6);
    let s3 = train(Mode::Dpo, &c).unwrap();
    assert!(s3.ref_forwards > 0 && s3.cache.as_deref().unwrap().starts_with("built"));
    let mut bytes = std::fs::read(&cache).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(&cache, bytes).unwrap();
    let s4 = train(Mode::Dpo, &c).unwrap();
    assert!(
        s4.ref_forwards > 0 && s4.cache.as_deref().unwrap().starts_with("built"),
        "corrupt cache was used: {:?}",
        s4.cache
    );
}

#[test]
fn no_ref_cache_gives_the_same_run() {
    let dir = tmp("nocache");
    let mut a = dpo_args(&dir.join("cached"), &dir.join("ref.logps"));
    a.steps = Some(4);
    train(Mode::Dpo, &a).unwrap();
    let mut b = dpo_args(&dir.join("live"), &dir.join("unused.logps"));
    b.steps = Some(4);
    b.no_ref_cache = true;
    let s = train(Mode::Dpo, &b).unwrap();
    assert_eq!(s.ref_forwards, 4, "one reference forward per step expected");
    assert!(!dir.join("unused.logps").exists());
    // the live reference's sums come back with the step's one readback, for the rewards
    for k in ["loss", "rewards/margins", "rewards/chosen", "logps/chosen"] {
        let (x, y) = (column(&a.out, k), column(&b.out, k));
        common::assert_close(
            &format!("{k} with and without the cache"),
            &y,
            &x,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn grad_accumulation_matches_one_big_batch_and_runs_repeat() {
    let dir = tmp("accum");
    let mut a = dpo_args(&dir.join("big"), &dir.join("ref.logps"));
    a.steps = Some(3);
    let mut b = dpo_args(&dir.join("accum"), &dir.join("ref.logps"));
    b.steps = Some(3);
    b.batch_size = 4;
    b.grad_accum = 2;
    train(Mode::Dpo, &a).unwrap();
    train(Mode::Dpo, &b).unwrap();
    for k in ["loss", "grad_norm", "rewards/margins"] {
        common::assert_close(
            &format!("accumulated {k}"),
            &column(&b.out, k),
            &column(&a.out, k),
            1e-5,
            1e-4,
        );
    }
    // the same seed on the CPU gives the same run, bit for bit
    let mut c = dpo_args(&dir.join("again"), &dir.join("ref.logps"));
    c.steps = Some(3);
    train(Mode::Dpo, &c).unwrap();
    assert_eq!(column(&c.out, "loss"), column(&a.out, "loss"));
    assert_eq!(column(&c.out, "grad_norm"), column(&a.out, "grad_norm"));
}

#[test]
fn lora_dpo_saves_a_peft_adapter() {
    let dir = tmp("lora");
    let mut a = dpo_args(&dir.join("adapter"), &dir.join("ref.logps"));
    a.lora_r = Some(4);
    a.lora_alpha = 8.0;
    a.lora_targets = vec!["q".into(), "v".into(), "down".into()];
    a.lr = Some(2e-2);
    train(Mode::Dpo, &a).unwrap();
    let loss = column(&a.out, "loss");
    assert!(
        mean(&loss[9..]) < mean(&loss[..3]),
        "LoRA loss did not fall: {loss:?}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    let w = ponder::model::weights::open_file(&a.out.join("adapter_model.safetensors")).unwrap();
    let mut names: Vec<String> = w.names().cloned().collect();
    names.sort();
    assert_eq!(names.len(), 2 * 3 * 2, "{names:?}");
    assert!(
        names.contains(
            &"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()
        ),
        "{names:?}"
    );
    assert_eq!(
        w.load_any("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
            .unwrap()
            .shape(),
        &[64, 4]
    );
    // without the cache the reference is the base with adapters off: the same run
    let mut b = dpo_args(&dir.join("adapter-live"), &dir.join("unused.logps"));
    b.lora_r = a.lora_r;
    b.lora_alpha = a.lora_alpha;
    b.lora_targets = a.lora_targets.clone();
    b.lr = a.lr;
    b.no_ref_cache = true;
    train(Mode::Dpo, &b).unwrap();
    common::assert_close(
        "LoRA with and without the cache",
        &column(&b.out, "loss"),
        &loss,
        1e-5,
        1e-5,
    );
    // merged: a full model directory that loads
    let mut c = b.clone();
    c.out = dir.join("merged");
    c.merge_lora = true;
    c.steps = Some(2);
    train(Mode::Dpo, &c).unwrap();
    ponder::model::Model::load(
        &c.out,
        ponder::model::LoadOpts {
            device: ponder::Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
}

fn ponder(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sigkill_and_resume_reproduces_the_uninterrupted_run() {
    let dir = tmp("kill");
    let model = root().join("qwen2-tied");
    let data = root().join("train/arith_pairs.jsonl");
    let cache = dir.join("ref.logps");
    let common_args = |out: &Path| -> Vec<String> {
        [
            "dpo",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lr",
            "5e-3",
            "--batch-size",
            "8",
            "--steps",
            "14",
            "--lr-scheduler",
            "cosine",
            "--warmup-steps",
            "2",
            "--save-every",
            "3",
            "--shuffle",
            "--device",
            "cpu",
            "--quiet",
            "--ref-cache",
            cache.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = dir.join("full");
    let (ok, log) = ponder(
        &common_args(&full)
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert!(ok, "{log}");
    let want = metrics::read(&full.join("metrics.jsonl")).unwrap();
    assert_eq!(want.len(), 14);
    // SIGKILL at different points (counted in logged steps), resume, repeat, then finish
    let lines = |out: &Path| {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for (k, kill_points) in [(0, vec![4, 9]), (1, vec![2, 7, 11]), (2, vec![13])] {
        let out = dir.join(format!("killed-{k}"));
        for (round, &at) in kill_points.iter().enumerate() {
            let mut args = common_args(&out);
            // resume when the killed run got as far as a checkpoint, else start over
            let has_checkpoint = std::fs::read_dir(&out)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
                })
                .unwrap_or(false);
            if round > 0 && has_checkpoint {
                args.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
            }
            let mut child = Command::new(env!("CARGO_BIN_EXE_ponder"))
                .args(&args)
                .env("PONDER_TEST_STEP_DELAY_MS", "30")
                .spawn()
                .unwrap();
            let t0 = std::time::Instant::now();
            let before = lines(&out);
            while lines(&out) < at || (round > 0 && lines(&out) <= before && at <= before) {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "run {k} ended before step {at}"
                );
                assert!(t0.elapsed().as_secs() < 120, "run {k} stalled");
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            child.kill().unwrap(); // SIGKILL on Unix: no chance to clean up
            child.wait().unwrap();
        }
        let mut args = common_args(&out);
        args.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
        let (ok, log) = ponder(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert!(ok, "resumed run {k} failed: {log}");
        assert!(log.contains("resumed from"), "{log}");
        same_as_uninterrupted(&out, &full, &want, &k.to_string());
    }

    // Kills at exact points, by fault injection (ponder aborts there: no cleanup, as a
    // SIGKILL): during start-up (after the orphan sweep, between writing the resume-time
    // metrics rewrite and renaming it), just after a checkpoint is published and before
    // pruning, half-way through pruning, and between the renames of the final save.
    let has_checkpoint = |out: &Path| {
        std::fs::read_dir(out)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            })
            .unwrap_or(false)
    };
    for (k, points) in [
        ("start-up", vec!["start", "step-logged:5", "start"]),
        ("metrics rewrite", vec!["step-logged:8", "before-rename:1"]),
        ("pruning", vec!["prune-renamed:1", "prune-renamed:1"]),
        ("publish", vec!["checkpoint-published:3", "step-logged:2"]),
        ("final save", vec!["between-renames:1"]),
    ] {
        let out = dir.join(format!("failpoint-{}", k.replace(' ', "-")));
        for point in &points {
            let mut args = common_args(&out);
            if has_checkpoint(&out) {
                args.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
            }
            let o = Command::new(env!("CARGO_BIN_EXE_ponder"))
                .args(&args)
                .env("PONDER_TEST_KILL_AT", point)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !o.status.success() && err.contains("test failpoint"),
                "{k}: the run was meant to die at {point}: {err}"
            );
        }
        let mut args = common_args(&out);
        if has_checkpoint(&out) {
            args.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
        }
        let (ok, log) = ponder(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert!(ok, "{k}: the run after the kills failed: {log}");
        same_as_uninterrupted(&out, &full, &want, k);
        // nothing left behind: no hidden temporary, no orphan checkpoint
        for e in std::fs::read_dir(&out).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".tmp"),
                "{k}: {name} left behind in {}",
                out.display()
            );
            if name.starts_with("checkpoint-") {
                assert!(e.path().join("state.json").exists(), "{k}: orphan {name}");
            }
        }
        let kept = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            .count();
        assert!(kept <= 2, "{k}: {kept} checkpoints kept, pruning keeps 2");
    }
}

/// The killed-and-resumed run in `out` logged what the uninterrupted one in `full` did,
/// step for step, and saved the same weights byte for byte.
fn same_as_uninterrupted(
    out: &Path,
    full: &Path,
    want: &[serde_json::Map<String, serde_json::Value>],
    k: &str,
) {
    {
        let got = metrics::read(&out.join("metrics.jsonl")).unwrap();
        assert_eq!(
            got.len(),
            want.len(),
            "killed run {k}: metrics lines differ"
        );
        for (g, w) in got.iter().zip(want) {
            for key in [
                "step",
                "loss",
                "grad_norm",
                "learning_rate",
                "rewards/margins",
                "rewards/accuracies",
            ] {
                assert_eq!(
                    g[key], w[key],
                    "killed run {k}, step {}: {key} differs after resume",
                    w["step"]
                );
            }
        }
        let a = std::fs::read(out.join("model.safetensors")).unwrap();
        let b = std::fs::read(full.join("model.safetensors")).unwrap();
        assert!(
            a == b,
            "killed run {k}: final weights differ from the uninterrupted run"
        );
    }
}

#[test]
fn config_file_mirrors_flags_and_flags_win() {
    let dir = tmp("config");
    let cfg = dir.join("dpo.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\ndata = {:?}\nout = {:?}\nlr = 5e-3\nsteps = 5\nbatch_size = 8\nlr_scheduler = \"constant\"\nquiet = true\ndevice = \"cpu\"\nref_cache = {:?}\nlora_targets = [\"q\", \"v\"]\n",
            root().join("qwen2-tied").to_str().unwrap(),
            root().join("train/arith_pairs.jsonl").to_str().unwrap(),
            dir.join("out").to_str().unwrap(),
            dir.join("ref.logps").to_str().unwrap()
        ),
    )
    .unwrap();
    let (ok, log) = ponder(&["dpo", "--config", cfg.to_str().unwrap(), "--steps", "2"]);
    assert!(ok, "{log}");
    assert_eq!(
        column(&dir.join("out"), "loss").len(),
        2,
        "the command-line --steps must win over the file"
    );
    assert!(column(&dir.join("out"), "learning_rate")
        .iter()
        .all(|&l| l == 5e-3));
    std::fs::write(&cfg, "model = \"x\"\nnot_a_flag = 3\n").unwrap();
    let (ok, log) = ponder(&["dpo", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && log.contains("--not-a-flag"), "{log}");
}

#[test]
fn bad_data_lines_are_reported_with_file_and_line() {
    let dir = tmp("baddata");
    let tok = ponder::model::Tok::load(&root().join("qwen2-tied")).unwrap();
    let t = ponder::train::data::Truncation {
        max_prompt_length: None,
        max_length: None,
        mode: ponder::train::data::TruncationMode::KeepStart,
    };
    let cases = [
        ("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"\n", "line 2: not valid JSON"),
        ("{\"prompt\": \"a\", \"chosen\": \"b\"}\n", "line 1: field `rejected` is missing"),
        ("{\"prompt\": \"a\", \"chosen\": 5, \"rejected\": \"c\"}\n", "line 1: field `chosen`: expected a string or a list of messages"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
        ("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n\n{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n", "line 2: empty line"),
        ("{\"prompt\": \"a\", \"chosen\": [{\"role\": \"assistant\", \"content\": \"b\"}], \"rejected\": \"c\"}\n", "line 1: the prompt is a string but a completion is a conversation"),
        ("{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"score\": 1}\n", "line 1: unexpected field `score`"),
        ("", "no examples"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.join(format!("bad{i}.jsonl"));
        std::fs::write(&p, text).unwrap();
        let e = ponder::train::data::load_pairs(&p, &tok, &t)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(p.to_str().unwrap()) && e.contains(want),
            "case {i}: {e}"
        );
    }
    // conversations go through the chat template; truncation is counted
    let p = dir.join("chat.jsonl");
    std::fs::write(&p, "{\"prompt\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}], \"chosen\": [{\"role\": \"assistant\", \"content\": \"4\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"5\"}]}\n").unwrap();
    let (pairs, stats) = ponder::train::data::load_pairs(&p, &tok, &t).unwrap();
    assert_eq!(stats.truncated, 0);
    let prompt = tok
        .decode(&pairs[0].chosen.ids[..pairs[0].chosen.prompt_len], false)
        .unwrap();
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let completion = tok
        .decode(&pairs[0].chosen.ids[pairs[0].chosen.prompt_len..], false)
        .unwrap();
    assert_eq!(
        completion, "4<|im_end|>\n<|im_end|>",
        "chosen completion = rest of the rendered chat + EOS"
    );
    let short = ponder::train::data::Truncation {
        max_prompt_length: Some(5),
        max_length: Some(9),
        ..t
    };
    let (pairs, stats) =
        ponder::train::data::load_pairs(&root().join("train/arith_pairs.jsonl"), &tok, &short)
            .unwrap();
    assert_eq!(stats.truncated, 48, "{stats}");
    assert!(pairs
        .iter()
        .all(|p| p.chosen.ids.len() <= 9 && p.chosen.prompt_len <= 5));
}

#[test]
fn sft_on_messages_learns_and_lora_dropout_is_reproducible() {
    let dir = tmp("sftmsg");
    let data = dir.join("chat.jsonl");
    let mut lines = String::new();
    for (q, a) in [
        ("What is 2+3?", "2 + 3 = 5."),
        ("What is 7+1?", "7 + 1 = 8."),
        ("What is 4+4?", "4 + 4 = 8."),
        ("What is 9+0?", "9 + 0 = 9."),
    ] {
        lines.push_str(&serde_json::json!({"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        lines.push('\n');
    }
    std::fs::write(&data, lines).unwrap();
    let (m, out) = (root().join("qwen2-tied"), dir.join("full"));
    #[rustfmt::skip]
    let a = TrainArgs::from_flags(&["--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--lr", "3e-3", "--steps", "12", "--lr-scheduler", "constant", "--device", "cpu", "--quiet"]).unwrap();
    train(Mode::Sft, &a).unwrap();
    let loss = column(&a.out, "loss");
    assert!(loss[11] < 0.5 * loss[0], "SFT loss did not fall: {loss:?}");
    // LoRA with dropout: masks come from (seed, step, micro-batch), so runs repeat exactly
    let mut b = a.clone();
    b.out = dir.join("lora1");
    b.lora_r = Some(4);
    b.lora_dropout = 0.3;
    b.steps = Some(4);
    train(Mode::Sft, &b).unwrap();
    let mut c = b.clone();
    c.out = dir.join("lora2");
    train(Mode::Sft, &c).unwrap();
    assert_eq!(column(&b.out, "loss"), column(&c.out, "loss"));
    let mut d = b.clone();
    d.out = dir.join("lora3");
    d.lora_dropout = 0.0;
    train(Mode::Sft, &d).unwrap();
    assert_ne!(
        column(&b.out, "loss")[1..],
        column(&d.out, "loss")[1..],
        "dropout had no effect"
    );
}

#[test]
fn review_regressions_in_training() {
    let dir = tmp("review");
    // a prompt that is empty (no BOS on this tokenizer) still trains: the first token
    // becomes the context, and counts stay aligned with the log-probs
    let data = dir.join("empty_prompt.jsonl");
    std::fs::write(&data, "{\"prompt\": \"\", \"chosen\": \"The answer is 42.\", \"rejected\": \"No.\"}\n{\"prompt\": \"Q: 1+1?\", \"chosen\": \" 2.\", \"rejected\": \" 3.\"}\n").unwrap();
    let mut a = dpo_args(&dir.join("empty"), &dir.join("ref1.logps"));
    a.data = data.clone();
    a.steps = Some(2);
    a.batch_size = 2;
    train(Mode::Dpo, &a).unwrap();
    // keep-end truncation that cuts into the completion
    let mut b = dpo_args(&dir.join("keepend"), &dir.join("ref2.logps"));
    b.steps = Some(2);
    b.max_length = Some(6);
    b.truncation_mode = ponder::train::data::TruncationMode::KeepEnd;
    train(Mode::Dpo, &b).unwrap();
    // an output directory with checkpoints is not silently reused
    let mut c = dpo_args(&dir.join("ckpt"), &dir.join("ref3.logps"));
    c.steps = Some(4);
    c.save_every = 2;
    train(Mode::Dpo, &c).unwrap();
    let e = train(Mode::Dpo, &c)
        .expect_err("a second fresh run over checkpoints must fail")
        .to_string();
    assert!(
        e.contains("already holds checkpoints") && e.contains("--resume"),
        "{e}"
    );
    // resuming with other batching is refused, naming the setting
    let mut d = c.clone();
    d.resume = Some(c.out.clone());
    d.batch_size = 4;
    let e = train(Mode::Dpo, &d)
        .expect_err("resume with another batch size must fail")
        .to_string();
    assert!(e.contains("batch_size") && e.contains("differ"), "{e}");
}

#[test]
fn config_epochs_yield_to_command_line_steps() {
    let dir = tmp("cfgconflict");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, format!("model = {:?}\ndata = {:?}\nout = {:?}\nepochs = 3\nwarmup_ratio = 0.1\nquiet = true\ndevice = \"cpu\"\nref_cache = {:?}\n", root().join("qwen2-tied").to_str().unwrap(), root().join("train/pairs.jsonl").to_str().unwrap(), dir.join("out").to_str().unwrap(), dir.join("r.logps").to_str().unwrap())).unwrap();
    let (ok, log) = ponder(&[
        "dpo",
        "--config",
        cfg.to_str().unwrap(),
        "--steps",
        "2",
        "--warmup-steps",
        "0",
    ]);
    assert!(ok, "{log}");
    assert_eq!(column(&dir.join("out"), "loss").len(), 2);
}

#[test]
fn a_users_file_where_the_plot_would_go_is_kept() {
    // `--metrics NAME.jsonl` puts the plot at NAME.svg: a user's NAME.svg survives (the
    // plot is skipped, with a message), while ponder's own plot there is replaced
    let dir = tmp("plotname");
    let mine = dir.join("notes.svg");
    let text = "<svg xmlns=\"http://www.w3.org/2000/svg\"><text>my figure</text></svg>";
    std::fs::write(&mine, text).unwrap();
    let mut a = dpo_args(&dir.join("run"), &dir.join("ref.logps"));
    a.steps = Some(1);
    a.metrics = Some(dir.join("notes.jsonl"));
    train(Mode::Dpo, &a).unwrap();
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), text);
    assert!(
        !dir.join("run/metrics.jsonl").exists(),
        "metrics went to --metrics"
    );
    assert_eq!(
        metrics::read(&dir.join("notes.jsonl")).unwrap().len(),
        1,
        "the metrics file is written"
    );
    // a plot of ponder's at the path is replaced by the next run's
    let mut b = dpo_args(&dir.join("run2"), &dir.join("ref.logps"));
    b.steps = Some(1);
    b.metrics = Some(dir.join("plot.jsonl"));
    train(Mode::Dpo, &b).unwrap();
    let first = std::fs::read_to_string(dir.join("plot.svg")).unwrap();
    assert!(first.contains("<svg"));
    let mut c = dpo_args(&dir.join("run3"), &dir.join("ref.logps"));
    c.steps = Some(3);
    c.metrics = Some(dir.join("plot.jsonl"));
    train(Mode::Dpo, &c).unwrap();
    let second = std::fs::read_to_string(dir.join("plot.svg")).unwrap();
    assert_ne!(first, second, "ponder's own plot was not replaced");
    let _ = std::fs::remove_dir_all(&dir);
}
