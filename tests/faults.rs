//! Regression tests for the bad-input and fault classes the fuzzing found: a file that
//! is not ponder's is never overwritten, nothing non-finite is trained or saved,
//! out-of-range flags and configs are errors (not panics, not silent changes), outputs
//! are written all-or-nothing, one run per output directory, and a closed stdout is a
//! quiet exit. No test here passes a device node as an output path.

mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ponder::train::trainer::{train, Mode, TrainArgs};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("faults-{tag}"))
}

fn dpo_flags(out: &Path, extra: &[&str]) -> Vec<String> {
    let (m, d) = (root().join("qwen2-tied"), root().join("train/pairs.jsonl"));
    let mut f: Vec<String> = [
        "--model",
        m.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lr",
        "1e-3",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    f.extend(extra.iter().map(|s| s.to_string()));
    f
}

fn run(mode: Mode, flags: &[String]) -> Result<ponder::train::trainer::Summary, String> {
    let a = TrainArgs::from_flags(flags).map_err(|e| e.to_string())?;
    train(mode, &a).map_err(|e| e.to_string())
}

#[test]
fn ref_cache_pointed_at_the_training_data_is_refused_and_the_data_kept() {
    let d = tmp("refcache");
    let data = d.join("pairs.jsonl");
    std::fs::copy(root().join("train/pairs.jsonl"), &data).unwrap();
    let before = std::fs::read(&data).unwrap();
    let mut flags = dpo_flags(&d.join("out"), &["--ref-cache", data.to_str().unwrap()]);
    // train on the copy, with the cache pointed at that same file
    let i = flags.iter().position(|f| f == "--data").unwrap();
    flags[i + 1] = data.to_str().unwrap().to_string();
    let err = run(Mode::Dpo, &flags).unwrap_err();
    assert!(err.contains("will not overwrite"), "{err}");
    assert_eq!(
        std::fs::read(&data).unwrap(),
        before,
        "the data was changed"
    );
    // a directory at the cache path is refused too
    let dir = d.join("a-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let err = run(
        Mode::Dpo,
        &dpo_flags(&d.join("out2"), &["--ref-cache", dir.to_str().unwrap()]),
    )
    .unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(dir.is_dir());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn non_finite_and_out_of_range_flags_are_errors_naming_the_flag() {
    let d = tmp("flags");
    for (flag, value, name) in [
        ("--lr", "nan", "--lr"),
        ("--lr", "inf", "--lr"),
        ("--lr", "-1e-3", "--lr"),
        ("--beta", "-0.1", "--beta"),
        ("--weight-decay", "nan", "--weight-decay"),
        ("--max-grad-norm", "nan", "--max-grad-norm"),
        ("--batch-size", "0", "--batch-size"),
        ("--grad-accum", "0", "--grad-accum"),
        ("--grad-accum", "18446744073709551615", "--grad-accum"),
        ("--epochs", "0", "--epochs"),
        ("--lora-dropout", "2", "--lora-dropout"),
        ("--lora-r", "18446744073709551615", "--lora-r"),
        ("--warmup-ratio", "1.5", "--warmup-ratio"),
        ("--max-length", "100000", "--max-length"),
    ] {
        let mut flags = dpo_flags(&d.join("out"), &[&format!("{flag}={value}")]);
        if flag == "--epochs" {
            let i = flags.iter().position(|f| f == "--steps").unwrap();
            flags.drain(i..i + 2);
        }
        let err = run(Mode::Dpo, &flags).unwrap_err();
        assert!(err.contains(name), "{flag} {value}: {err}");
        assert!(
            !d.join("out/model.safetensors").exists(),
            "{flag} {value} saved a model"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn non_finite_weights_are_never_saved() {
    let d = tmp("nan-save");
    let m = ponder::model::Model::load(
        &root().join("qwen2-tied"),
        ponder::model::LoadOpts {
            device: ponder::Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
    let mut net = m.net;
    let n = net.norm.numel();
    let mut w = vec![1.0f32; n];
    w[n / 2] = f32::NAN;
    net.norm = ponder::Tensor::from_vec(w, &[n], ponder::Device::Cpu).unwrap();
    let out = d.join("model");
    let err = ponder::model::save::save_model(&net, None, &out, ponder::DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.norm.weight") && err.contains("non-finite"),
        "{err}"
    );
    assert!(!out.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&d);
}

fn config_with(field: &str, value: serde_json::Value) -> String {
    let text = std::fs::read_to_string(root().join("llama3-rope/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut at = &mut v;
    let parts: Vec<&str> = field.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = at.get_mut(*p).unwrap();
    }
    at[parts[parts.len() - 1]] = value;
    ponder::model::Config::from_json(Path::new("config.json"), v)
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn configs_that_would_give_nan_logits_or_overflow_are_refused() {
    use serde_json::json;
    for (field, value) in [
        ("rope_parameters.rope_theta", json!(0.0)),
        ("rms_norm_eps", json!(-1e-6)),
        ("rope_parameters.factor", json!(0.0)),
        ("num_key_value_heads", json!(0)),
        ("head_dim", json!(1u64 << 62)),
        ("vocab_size", json!(0)),
        ("num_hidden_layers", json!(1u64 << 40)),
    ] {
        let err = config_with(field, value.clone());
        let leaf = field.rsplit('.').next().unwrap();
        assert!(err.contains(leaf), "{field} = {value}: {err:?}");
    }
    assert_eq!(
        config_with("rope_parameters.rope_theta", json!(500000.0)),
        ""
    );
}

#[test]
fn generate_refuses_positions_past_the_model_and_huge_sample_counts() {
    let m = root().join("qwen2-tied");
    let ponder_bin = env!("CARGO_BIN_EXE_ponder");
    for args in [
        vec!["--max-new-tokens", "100000000"],
        vec!["-n", "18446744073709551615"],
        vec!["--temperature", "nan"],
    ] {
        let out = Command::new(ponder_bin)
            .args([
                "generate",
                "--model",
                m.to_str().unwrap(),
                "--prompt-ids",
                "3,4,5",
                "--device",
                "cpu",
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.starts_with("error:") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_second_run_into_a_locked_output_is_refused() {
    let d = tmp("lock");
    let out = d.join("out");
    let _held = ponder::files::DirLock::acquire(&out).unwrap();
    let err = run(Mode::Dpo, &dpo_flags(&out, &[])).unwrap_err();
    assert!(err.contains("in use by another ponder run"), "{err}");
    assert!(!out.join("metrics.jsonl").exists());
    drop(_held);
    if let Err(e) = run(
        Mode::Dpo,
        &dpo_flags(&out, &["--ref-cache", d.join("c.logps").to_str().unwrap()]),
    ) {
        panic!("the run after the lock was released failed: {e}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_metrics_file_that_is_not_ours_is_kept() {
    let d = tmp("metrics");
    let mine = d.join("notes.txt");
    std::fs::write(&mine, "my notes\nnot json\n").unwrap();
    let err = run(
        Mode::Dpo,
        &dpo_flags(&d.join("out"), &["--metrics", mine.to_str().unwrap()]),
    )
    .unwrap_err();
    assert!(err.contains("not a ponder metrics file"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "my notes\nnot json\n"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn orphans_of_a_killed_run_are_removed_at_start() {
    let d = tmp("orphans");
    let out = d.join("out");
    // what a kill during pruning or checkpoint writing leaves: a checkpoint-N without its
    // state.json, a hidden temporary checkpoint directory, a temporary file of a dead pid
    std::fs::create_dir_all(out.join("checkpoint-3")).unwrap();
    std::fs::write(out.join("checkpoint-3/trainable.safetensors"), b"half").unwrap();
    std::fs::create_dir_all(out.join(".checkpoint-4.999999-0-0.tmp")).unwrap();
    std::fs::write(out.join(".model.safetensors.4194304-0-00000000.tmp"), b"x").unwrap();
    std::fs::write(out.join("keep-me.txt"), b"mine").unwrap();
    // the killed run had claimed the directory (its marker is written first)
    std::fs::write(
        out.join(ponder::files::OUT_MARKER),
        br#"{"command": "dpo"}"#,
    )
    .unwrap();
    run(
        Mode::Dpo,
        &dpo_flags(&out, &["--ref-cache", d.join("c.logps").to_str().unwrap()]),
    )
    .unwrap();
    assert!(!out.join("checkpoint-3").exists());
    assert!(!out.join(".checkpoint-4.999999-0-0.tmp").exists());
    assert!(!out
        .join(".model.safetensors.4194304-0-00000000.tmp")
        .exists());
    assert_eq!(std::fs::read(out.join("keep-me.txt")).unwrap(), b"mine");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn save_into_an_existing_model_is_all_or_nothing() {
    let d = tmp("save");
    let out = d.join("model");
    let src = root().join("qwen2-tied");
    let bin = env!("CARGO_BIN_EXE_ponder");
    let ok = Command::new(bin)
        .args([
            "save",
            "--model",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    // make one of the files the save must write impossible to replace: the whole save
    // fails before any file is renamed into place, and nothing temporary is left
    std::fs::remove_file(out.join("tokenizer_config.json")).unwrap();
    std::fs::create_dir_all(out.join("tokenizer_config.json")).unwrap();
    let bad = Command::new(bin)
        .args([
            "save",
            "--model",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            "bf16",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_closed_stdout_is_a_quiet_exit() {
    let m = root().join("qwen2-tied");
    for args in [
        vec!["info", "--device", "cpu"],
        vec![
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--prompt-ids",
            "3,4,5",
            "--device",
            "cpu",
            "--max-new-tokens",
            "20",
            "--ignore-eos",
            "-n",
            "3",
        ],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ponder"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // the reader goes away before ponder writes: every write meets a broken pipe
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {err}");
    }
}

/// A copy of the qwen2-tied tokenizer directory with tokenizer.json edited by `edit`.
fn tokenizer_variant(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> common::Scratch {
    let d = tmp(tag);
    let src = root().join("qwen2-tied");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(d.join("tokenizer.json"), v.to_string()).unwrap();
    d
}

#[test]
fn tokenizer_truncation_and_padding_blocks_are_ignored_as_transformers_does() {
    let text = "Natalia sold 48 clips in April, and then she sold half as many clips in May.";
    let plain = ponder::model::Tok::load(&root().join("qwen2-tied")).unwrap();
    let want = plain.encode(text, false).unwrap();
    assert!(want.len() > 6);
    // a truncation block that would cut to 4 tokens (with a stride the crate panics on),
    // and a padding block that would pad to 64
    let d = tokenizer_variant("trunc", |v| {
        v["truncation"] = serde_json::json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 9});
        v["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"});
    });
    let tok = ponder::model::Tok::load(&d).unwrap();
    assert_eq!(tok.encode(text, false).unwrap(), want);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn malformed_tokenizer_files_are_errors_not_panics() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "empty-replace",
            Box::new(|v: &mut serde_json::Value| {
                v["normalizer"] = serde_json::json!({"type": "Replace", "pattern": {"String": ""}, "content": "x"});
            }),
            "empty pattern",
        ),
        (
            "undefined-special",
            Box::new(|v: &mut serde_json::Value| {
                v["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {}});
            }),
            "[CLS]",
        ),
    ];
    for (tag, edit, want) in cases {
        let d = tokenizer_variant(tag, edit);
        let err = ponder::model::Tok::load(&d)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("tokenizer.json") && err.contains(want),
            "{tag}: {err:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn two_concurrent_cache_builders_never_share_a_temporary_file() {
    // two processes building the same reference cache: each writes its own temporary
    // file and renames it into place, so the cache that remains is whole and every run
    // succeeds with the same losses
    let d = tmp("concurrent-cache");
    let cache = d.join("ref.logps");
    let bin = env!("CARGO_BIN_EXE_ponder");
    let spawn = |out: &str| {
        let flags = dpo_flags(&d.join(out), &["--ref-cache", cache.to_str().unwrap()]);
        let mut args = vec!["dpo".to_string()];
        args.extend(flags);
        Command::new(bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kids: Vec<_> = (0..4).map(|i| spawn(&format!("out{i}"))).collect();
    let mut losses = Vec::new();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        let last = err
            .lines()
            .find(|l| l.starts_with("done:"))
            .unwrap_or("")
            .to_string();
        losses.push(last.split(", reference").next().unwrap_or("").to_string());
    }
    assert!(losses.windows(2).all(|w| w[0] == w[1]), "{losses:?}");
    let names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn resume_refuses_a_checkpoint_of_another_model() {
    let d = tmp("resume-model");
    let out = d.join("out");
    let cache = d.join("c.logps");
    let mut flags = dpo_flags(
        &out,
        &["--save-every", "1", "--ref-cache", cache.to_str().unwrap()],
    );
    let i = flags.iter().position(|f| f == "--steps").unwrap();
    flags[i + 1] = "3".into();
    run(Mode::Dpo, &flags).unwrap();
    // the same architecture and tokenizer, other weights (a bf16 round trip)
    let other = d.join("other");
    let ok = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args([
            "save",
            "--model",
            root().join("qwen2-tied").to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
            "--dtype",
            "bf16",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let mut again = flags.clone();
    let m = again.iter().position(|f| f == "--model").unwrap();
    again[m + 1] = other.to_str().unwrap().into();
    again.extend(["--resume".to_string(), out.to_str().unwrap().to_string()]);
    let err = run(Mode::Dpo, &again).unwrap_err();
    assert!(err.contains("model:"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn hostile_chat_templates_are_errors_not_hangs_or_crashes() {
    use ponder::model::chat::{render, Message};
    let msgs = [Message::new("user", "hi")];
    for (name, t) in [
        (
            "nested loops",
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        ),
        (
            "huge indent",
            "{{ messages | tojson(indent=1000000000000) }}",
        ),
        (
            "deep recursion",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ),
        (
            "string doubling",
            "{% set s = 'ab' %}{% for i in range(64) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}",
        ),
        (
            "namespace doubling",
            "{% set ns = namespace(t='ab') %}{% for i in range(64) %}{% set ns.t = ns.t + ns.t %}{% endfor %}{{ ns.t|length }}",
        ),
        (
            "block-set doubling",
            "{% set s = 'ab' %}{% for i in range(64) %}{% set s %}{{ s }}{{ s }}{% endset %}{% endfor %}{{ s|length }}",
        ),
        (
            "huge output",
            "{% for a in range(100000) %}{{ 'abcdefghij' * 10 }}{% endfor %}",
        ),
    ] {
        let t0 = std::time::Instant::now();
        let err = render(t, &msgs, true, None, None).unwrap_err().to_string();
        assert!(err.contains("chat_template"), "{name}: {err}");
        assert!(
            t0.elapsed().as_secs() < 20,
            "{name} took {:?}",
            t0.elapsed()
        );
    }
    // an ordinary template still renders
    let ok = render(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
        &msgs,
        true,
        None,
        None,
    )
    .unwrap();
    assert_eq!(ok, "<user>hi");
}

#[test]
fn tensors_the_config_does_not_use_are_refused() {
    let d = tmp("extra-tensors");
    let src = root().join("qwen2-tied");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let m = ponder::model::Model::load(
        &src,
        ponder::model::LoadOpts {
            device: ponder::Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
    let mut named = m.net.named_parameters();
    // a stray lm_head beside tied embeddings, which the tied model would silently ignore
    let emb = named[0].1.clone();
    named.push(("lm_head.weight".into(), emb));
    let bytes = ponder::model::save::safetensors_bytes(&named, ponder::DType::F32).unwrap();
    std::fs::write(d.join("model.safetensors"), bytes).unwrap();
    let err = ponder::model::Model::load(
        &d,
        ponder::model::LoadOpts {
            device: ponder::Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("lm_head.weight") && err.contains("does not use"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_run_bigger_than_the_memory_is_refused_before_it_allocates() {
    // PONDER_MEMORY_LIMIT stands in for a small machine: the tiny model's weights and
    // optimizer fit in 1 MiB-ish, its activations for a batch of 8 long pairs do not
    let d = tmp("memory");
    let out = d.join("out");
    let data = root().join("train/arith_pairs.jsonl");
    let run = |limit: &str, bs: &str| {
        let mut f = dpo_flags(&out, &["--batch-size", bs, "--no-ref-cache"]);
        let i = f.iter().position(|x| x == "--data").unwrap();
        f[i + 1] = data.to_str().unwrap().to_string();
        std::process::Command::new(env!("CARGO_BIN_EXE_ponder"))
            .arg("dpo")
            .args(&f)
            .env("PONDER_MEMORY_LIMIT", limit)
            .output()
            .unwrap()
    };
    let o = run("100", "8");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("only 0.0 MiB is available") && err.contains("--lora-r"),
        "{err}"
    );
    assert!(!out.join("metrics.jsonl").exists(), "it started training");
    let o = run("4000000", "8");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("for a micro-batch of 16 x"),
        "{err}"
    );
    assert!(err.contains("--batch-size"), "{err}");
    let o = run("4000000", "1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // generation: the KV cache is checked against the same figure
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ponder-tiny/base");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args([
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "12+7",
        ])
        .args(["-n", "64", "--max-new-tokens", "200", "--device", "cpu"])
        .env("PONDER_MEMORY_LIMIT", "1000000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("KV cache of"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
