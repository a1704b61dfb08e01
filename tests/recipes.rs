//! The recipes end to end through the command line, CI-sized, on the bundled tiny models:
//! each runs, writes its rounds, pairs, plot and model, resumes at round granularity, and
//! its outputs load again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ponder-tiny")
}

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("recipes-{tag}"))
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

fn rounds(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Synthetic data for the tests: a few labelled and unlabelled questions.
fn data(d: &Path) -> PathBuf {
    let dir = d.join("data");
    ponder(&[
        "data",
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--n-train",
        "40",
        "--n-dev",
        "8",
        "--n-test",
        "8",
        "--seed",
        "5",
    ]);
    dir
}

#[test]
fn self_train_and_dpo_st_run_and_resume() {
    let d = tmp("st");
    let data = data(&d);
    let m = models();
    let (train, test) = (
        data.join("train-short.jsonl"),
        data.join("test-short.jsonl"),
    );
    let (short, base) = (m.join("sft-short"), m.join("base"));
    for (name, extra) in [("dpo-st", vec![]), ("plain", vec!["--no-dpo"])] {
        let out = d.join(name);
        let mut args = vec![
            "self-train",
            "--model",
            short.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--eval-data",
            test.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--rounds",
            "1",
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
            "--quiet",
        ];
        args.extend(extra.iter().copied());
        let text = ponder(&args);
        assert!(text.contains("round 1: accuracy"), "{text}");
        let r = rounds(&out);
        assert_eq!(r.len(), 1);
        assert!(r[0]["accuracy"].as_f64().is_some() && r[0]["positives"].as_u64().unwrap() > 0);
        assert!(out.join("round-1/model/model.safetensors").exists());
        assert!(out.join("rounds.svg").exists());
        if name == "dpo-st" {
            assert!(out.join("round-1/pairs.jsonl").exists());
            assert!(r[0].get("dpo_pairs").is_some());
        }
        // a second round resumes after the first; asking again without --resume is refused
        let mut again = args.clone();
        let at = again.iter().position(|a| *a == "1").unwrap();
        again[at] = "2";
        again.push("--resume");
        let text = ponder(&again);
        assert!(text.contains("round 2: accuracy"), "{text}");
        assert_eq!(rounds(&out).len(), 2);
        let refused = Command::new(env!("CARGO_BIN_EXE_ponder"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// An instruct model as people have it: a GGUF file, questions asked through its chat
/// template (`--chat`); each round records the seconds of every phase.
#[test]
fn self_train_takes_a_gguf_model_and_asks_through_the_chat_template() {
    let d = tmp("st-chat");
    let data = data(&d);
    let gguf = d.join("sft-short.gguf");
    ponder(&[
        "save",
        "--model",
        models().join("sft-short").to_str().unwrap(),
        "--out",
        gguf.to_str().unwrap(),
    ]);
    let out = d.join("run");
    let text = ponder(&[
        "self-train",
        "--model",
        gguf.to_str().unwrap(),
        "--data",
        data.join("train-short.jsonl").to_str().unwrap(),
        "--eval-data",
        data.join("test-short.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rounds",
        "1",
        "--limit",
        "6",
        "--eval-limit",
        "4",
        "--k",
        "2",
        "--max-new-tokens",
        "60",
        "--chat",
        "--quiet",
    ]);
    assert!(text.contains("round 1: accuracy"), "{text}");
    let r = rounds(&out);
    for k in [
        "seconds_sample_dpo",
        "seconds_sample_sft",
        "seconds_sft",
        "seconds_eval",
    ] {
        assert!(r[0][k].as_f64().is_some(), "{k} missing: {}", r[0]);
    }
    let start: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("start.json")).unwrap()).unwrap();
    assert!(start["seconds_eval"].as_f64().is_some());
    // the prompts sampled from were rendered by the chat template
    let pairs = std::fs::read_to_string(out.join("round-1/pairs.jsonl")).unwrap_or_default();
    let positives = std::fs::read_to_string(out.join("round-1/positives.jsonl")).unwrap();
    // <|im_start|> is id 1 in ponder-tiny's vocabulary: every positive's prompt opens with it
    let starts: Vec<u64> = positives
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ids"][0]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        pairs.contains("<|im_start|>user")
            || (!starts.is_empty() && starts.iter().all(|&i| i == 1)),
        "no chat-rendered prompt in the round's pairs or positives:\n{pairs}\n{positives}"
    );
    assert!(out.join("round-1/model/model.safetensors").exists());
    assert!(out.join("round-1/model/tokenizer.json").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn thinkpo_runs_from_a_short_model_or_a_short_file() {
    let d = tmp("thinkpo");
    let data = data(&d);
    let m = models();
    let out = d.join("a");
    let text = ponder(&[
        "thinkpo",
        "--model",
        m.join("sft-long").to_str().unwrap(),
        "--data",
        data.join("train-long.jsonl").to_str().unwrap(),
        "--short-model",
        m.join("sft-short").to_str().unwrap(),
        "--eval-data",
        data.join("test-long.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--limit",
        "16",
        "--keep-format-correct",
        "--calculator",
        "--max-new-tokens",
        "200",
        "--lr",
        "1e-5",
        "--quiet",
    ]);
    assert!(
        text.contains("before: accuracy") && text.contains("after:  accuracy"),
        "{text}"
    );
    assert!(out.join("model/model.safetensors").exists() && out.join("pairs.jsonl").exists());
    // short answers from a file: the gold short rationales, all correct
    let out = d.join("b");
    let text = ponder(&[
        "thinkpo",
        "--model",
        m.join("sft-long").to_str().unwrap(),
        "--data",
        data.join("train-long.jsonl").to_str().unwrap(),
        "--short-data",
        data.join("train-short.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--limit",
        "10",
        "--max-length-gap",
        "1000",
        "--quiet",
    ]);
    assert!(text.contains("pairs 10 "), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tpo_with_the_verifier_keeps_chosen_responses_short() {
    let d = tmp("tpo");
    let data = data(&d);
    let m = models();
    let out = d.join("tpo");
    let text = ponder(&[
        "tpo",
        "--model",
        m.join("sft-short").to_str().unwrap(),
        "--data",
        data.join("train-short.jsonl").to_str().unwrap(),
        "--val-data",
        data.join("dev-short.jsonl").to_str().unwrap(),
        "--eval-data",
        data.join("test-short.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--template",
        "answer-line",
        "--rounds",
        "2",
        "--per-round",
        "8",
        "--k",
        "4",
        "--calculator",
        "--max-new-tokens",
        "120",
        "--lr",
        "1e-5",
        "--quiet",
    ]);
    let r = rounds(&out);
    assert_eq!(r.len(), 2, "{text}");
    // the check below must have pairs to check
    assert!(
        r.iter().any(|row| row["pairs"].as_u64().unwrap() > 0),
        "{text}"
    );
    // without --rho each round takes the smallest rho of the grid whose chosen responses
    // are no longer than the rejected ones on average (a fixed rho promises nothing of
    // the kind: a correct long answer can still beat a wrong short one); the grid's
    // largest, 4, is the fallback when none does
    let grid = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0];
    for row in &r {
        let rho = row["rho"].as_f64().unwrap();
        assert!(grid.contains(&rho), "{row}");
        if row["pairs"].as_u64().unwrap() > 0 && rho < 4.0 {
            assert!(
                row["mean_chosen_length"].as_f64() <= row["mean_rejected_length"].as_f64(),
                "{row}"
            );
        }
    }
    assert!(out.join("round-2/model/model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn demo_runs_end_to_end_at_a_small_size() {
    let d = tmp("demo");
    let out = d.join("demo");
    let text = ponder(&[
        "demo",
        "--models",
        models().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--labelled",
        "12",
        "--unlabelled",
        "12",
        "--k",
        "2",
        "--test-questions",
        "12",
        "--thinkpo-questions",
        "12",
        "--tpo-questions",
        "8",
        "--quiet",
    ]);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let stages: Vec<&str> = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["sft", "self-train", "dpo-st", "sft-long", "thinkpo", "tpo"],
        "{text}"
    );
    for r in s["rows"].as_array().unwrap() {
        assert_eq!(r["n"], 12);
        assert!(r["accuracy"].as_f64().unwrap() >= 0.0 && r["mean_tokens"].as_f64().unwrap() > 0.0);
    }
    assert!(s["seconds"].as_f64().unwrap() > 0.0);
    assert!(out.join("summary.svg").exists());
    // the same --out again is refused, and the first run is left as it was
    let m = models();
    let before = std::fs::read(out.join("summary.json")).unwrap();
    #[rustfmt::skip]
    let small = [
        "demo", "--models", m.to_str().unwrap(), "--labelled", "4", "--unlabelled", "4", "--k", "2",
        "--test-questions", "4", "--thinkpo-questions", "4", "--tpo-questions", "4", "--quiet",
    ];
    let mut again: Vec<&str> = small.to_vec();
    again.extend(["--out", out.to_str().unwrap()]);
    let refused = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(&again)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not empty"));
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
    // without --out, the main command never touches an earlier run: runs/demo holds one,
    // so this run writes runs/demo-2
    std::fs::create_dir_all(d.join("runs/demo")).unwrap();
    std::fs::write(d.join("runs/demo/notes.txt"), "earlier").unwrap();
    let fresh = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(small)
        .current_dir(&d)
        .output()
        .unwrap();
    assert!(
        fresh.status.success(),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    assert!(d.join("runs/demo-2/summary.json").exists());
    assert_eq!(
        std::fs::read_to_string(d.join("runs/demo/notes.txt")).unwrap(),
        "earlier"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tpo_with_a_reward_model_judge_pairs_by_its_scores() {
    use ponder::model::reward::RewardModel;
    use ponder::recipes::tpo::ThoughtTemplate;
    let d = tmp("tpo-rm");
    let data = data(&d);
    let rm_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/qwen2-reward");
    let out = d.join("tpo");
    let judge = format!("reward-model:{}", rm_dir.display());
    #[rustfmt::skip]
    let text = ponder(&[
        "tpo", "--model", models().join("sft-short").to_str().unwrap(),
        "--data", data.join("train-short.jsonl").to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--template", "answer-line", "--judge", &judge,
        "--rounds", "1", "--per-round", "6", "--k", "4", "--calculator",
        "--max-new-tokens", "120", "--lr", "1e-5", "--quiet",
    ]);
    let r = rounds(&out);
    assert_eq!(r.len(), 1, "{text}");
    let pairs: Vec<serde_json::Value> = std::fs::read_to_string(out.join("round-1/pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!pairs.is_empty(), "no pairs: {text}");
    // every recorded score is the reward model's score of (instruction, response)
    let rm = RewardModel::load(&rm_dir, ponder::Device::Cpu).unwrap();
    let t = ThoughtTemplate::answer_line();
    for p in &pairs {
        let prompt = p["prompt"].as_str().unwrap();
        for (side, score) in [("chosen", "chosen_score"), ("rejected", "rejected_score")] {
            let Some((_, resp)) = t.split(p[side].as_str().unwrap()) else {
                continue; // an unparsed sample is rejected without a score
            };
            let want = rm.score(prompt, resp).unwrap();
            let got = p[score].as_f64().unwrap();
            assert!((got - want).abs() < 1e-5, "{side}: {got} vs {want}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}
