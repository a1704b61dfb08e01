//! The model commands as a user types them: logits, compare, generate (json, chat, stream)
//! and save.

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

fn ponder(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn reference_ids(name: &str, key: &str) -> Vec<u32> {
    let r =
        ponder::model::weights::open_file(&fixture(name).join("reference.safetensors")).unwrap();
    r.load_any(key).unwrap().to_vec_u32().unwrap()
}

#[test]
fn logits_prints_json_for_every_position() {
    let dir = fixture("llama-gqa");
    let (ok, out, err) = ponder(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        "3,17,42",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["shape"], serde_json::json!([3, 384]));
    assert_eq!(v["logits"].as_array().unwrap().len(), 3 * 384);
    let (ok, _, err) = ponder(&["logits", "--model", dir.to_str().unwrap(), "--ids", "3,999"]);
    assert!(!ok && err.contains("token id 999 is out of range"), "{err}");
    // past the model's positions, as generate and training refuse
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let max_pos = cfg["max_position_embeddings"].as_u64().unwrap() as usize;
    let ids = vec!["3"; max_pos + 1].join(",");
    let (ok, _, err) = ponder(&["logits", "--model", dir.to_str().unwrap(), "--ids", &ids]);
    assert!(
        !ok && err.contains("max_position_embeddings") && err.contains(&format!("{}", max_pos + 1)),
        "{err}"
    );
}

#[test]
fn compare_reports_agreement_with_a_reference_dump() {
    let dir = fixture("qwen2-tied");
    let r = dir.join("reference.safetensors");
    let mut devices = vec!["cpu"];
    if common::gpu_ok("cli compare") {
        devices.push("gpu");
    }
    for dev in devices {
        let (ok, out, err) = ponder(&[
            "compare",
            "--model",
            dir.to_str().unwrap(),
            "--reference",
            r.to_str().unwrap(),
            "--device",
            dev,
            "--tol",
            "1e-3",
        ]);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains("top-1 agreement 12/12") && out.contains("mean KL"),
            "{out}"
        );
    }
    let (ok, _, err) = ponder(&[
        "compare",
        "--model",
        dir.to_str().unwrap(),
        "--reference",
        dir.join("config.json").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("config.json") && err.contains("invalid safetensors"),
        "{err}"
    );
}

#[test]
fn generate_greedy_json_matches_transformers() {
    let name = "llama3-rope";
    let prompt: Vec<String> = reference_ids(name, "greedy.prompt")
        .iter()
        .map(|i| i.to_string())
        .collect();
    let want = reference_ids(name, "greedy.ids");
    let dir = fixture(name);
    let (ok, out, err) = ponder(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
        "--ignore-eos",
        "--format",
        "json",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let ids: Vec<u32> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want[prompt.len()..]);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["text"].is_string());
    assert!(err.contains("tok/s"), "tokens/s missing from stderr: {err}");
}

#[test]
fn generate_chat_renders_the_template_and_streams() {
    let dir = fixture("qwen2-tied");
    let (ok, out, err) = ponder(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--chat",
        "--prompt",
        "What is 2+2?",
        "--max-new-tokens",
        "12",
        "--seed",
        "5",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty(), "no streamed text");
    // 79 prompt tokens = the ChatML rendering with Qwen's default system prompt
    assert!(err.contains("prefill 79 tokens"), "{err}");
    let (ok, out, _) = ponder(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "Hi",
        "-n",
        "3",
        "--max-new-tokens",
        "5",
        "--format",
        "json",
        "--device",
        "cpu",
    ]);
    assert!(ok);
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn save_round_trips() {
    let src = fixture("qwen2-bf16");
    let scratch = common::scratch("save");
    let out = scratch.join("out");
    let (ok, _, err) = ponder(&[
        "save",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing from the saved directory");
    }
    // same logits from the saved (f32) copy of the bf16 model
    let a = ponder(&[
        "logits",
        "--model",
        src.to_str().unwrap(),
        "--ids",
        "5,6,7",
        "--device",
        "cpu",
    ])
    .1;
    let b = ponder(&[
        "logits",
        "--model",
        out.to_str().unwrap(),
        "--ids",
        "5,6,7",
        "--device",
        "cpu",
    ])
    .1;
    assert_eq!(a, b, "saved model gives different logits");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(cfg["rope_scaling"]["type"], "linear");
}

/// `generate -n 6 --rows 2`: six samples through a pool of two rows (each ending row takes
/// the next sample) print what six rows at once print, min-p included.
#[test]
fn generate_with_fewer_rows_than_samples_prints_the_same_samples() {
    let dir = fixture("qwen2-tied");
    let run = |rows: &str| {
        let (ok, out, err) = ponder(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Count to five:",
            "-n",
            "6",
            "--rows",
            rows,
            "--min-p",
            "0.05",
            "--max-new-tokens",
            "9",
            "--seed",
            "4",
            "--format",
            "json",
            "--device",
            "cpu",
        ]);
        assert!(ok, "{err}");
        out
    };
    let all = run("0");
    assert_eq!(all.lines().count(), 6, "{all}");
    assert_eq!(run("2"), all);
}
