//! Data as people have it: Parquet files laid out as Hugging Face datasets store them
//! (models/reference/make_data_fixtures.py), columns named otherwise than ponder's fields
//! (`--*-field`), answers written with their units.

mod common;

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fx(p: &str) -> String {
    root().join(p).to_str().unwrap().to_string()
}

fn tmp(name: &str) -> common::Scratch {
    common::scratch(&format!("data-{name}"))
}

fn ponder(args: &[&str]) -> (bool, String) {
    common::ponder_cli(args)
}

#[test]
fn dpo_trains_on_parquet_with_its_own_column_names() {
    let d = tmp("dpo");
    let out = d.join("out");
    let (ok, log) = ponder(&[
        "dpo",
        "--model",
        &fx("models/fixtures/llama-gqa"),
        "--data",
        &fx("models/fixtures/data/pairs.parquet"),
        "--prompt-field",
        "instruction",
        "--chosen-field",
        "preferred",
        "--rejected-field",
        "dispreferred",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    assert!(out.join("model.safetensors").is_file(), "{log}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"rewards/chosen\""))
            .count(),
        2,
        "{metrics}"
    );
    // without the mapping, the missing field is named, with the row
    let (ok, log) = ponder(&[
        "dpo",
        "--model",
        &fx("models/fixtures/llama-gqa"),
        "--data",
        &fx("models/fixtures/data/pairs.parquet"),
        "--out",
        d.join("o2").to_str().unwrap(),
        "--steps",
        "1",
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && log.contains("row 1") && log.contains("`prompt`"),
        "{log}"
    );
    // a mapped column that is not there is named with its flag
    let (ok, log) = ponder(&[
        "dpo",
        "--model",
        &fx("models/fixtures/llama-gqa"),
        "--data",
        &fx("models/fixtures/data/pairs.parquet"),
        "--prompt-field",
        "question",
        "--chosen-field",
        "preferred",
        "--rejected-field",
        "dispreferred",
        "--out",
        d.join("o3").to_str().unwrap(),
        "--steps",
        "1",
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && log.contains("column `question` (named by --prompt-field) is missing"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sft_reads_a_parquet_conversation_column() {
    let d = tmp("sft");
    let out = d.join("out");
    let (ok, log) = ponder(&[
        "sft",
        "--model",
        &fx("models/fixtures/qwen2-tied"),
        "--data",
        &fx("models/fixtures/data/chat_sft.parquet"),
        "--messages-field",
        "conversation",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    assert!(out.join("model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eval_joins_columns_and_reads_numbers_with_units() {
    let d = tmp("eval");
    let preds = d.join("preds.jsonl");
    std::fs::write(
        &preds,
        "{\"completion\":\"The answer is 9.\"}\n{\"completion\":\"Ellen has 15 balls.\"}\n{\"completion\":\"Both cost $1,234.50 in all. The answer is 1234.5\"}\n{\"completion\":\"At 4 p.m.\"}\n",
    )
    .unwrap();
    let rec = d.join("rec.jsonl");
    let (ok, log) = ponder(&[
        "eval",
        "--data",
        &fx("models/fixtures/data/wordproblems.parquet"),
        "--predictions",
        preds.to_str().unwrap(),
        "--question-field",
        "passage,question",
        "--format",
        "json",
        "--out",
        rec.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["n"], 4);
    assert_eq!(first["accuracy"], 0.75, "{log}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&rec)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["gold"], "9");
    assert_eq!(rows[3]["gold"], "3:30 p.m.");
    // numbers keep their text as written, mapped (`solution`) or not (`answer`): read as
    // an f64, a 24-digit integer would come back as 1.2345678901234568e23 and never match
    let eval = |data: &str, pred: &str, extra: &[&str]| -> (bool, String) {
        let (jl, p) = (d.join("q.jsonl"), d.join("p.jsonl"));
        std::fs::write(&jl, format!("{data}\n")).unwrap();
        std::fs::write(&p, format!("{{\"completion\":\"The answer is {pred}\"}}\n")).unwrap();
        let mut args = vec![
            "eval",
            "--data",
            jl.to_str().unwrap(),
            "--predictions",
            p.to_str().unwrap(),
        ];
        args.extend(["--question-field", "problem", "--format", "json"]);
        args.extend(extra);
        ponder(&args)
    };
    let big = "123456789012345678901234";
    let near = "123456789012345678901235";
    let mapped = format!("{{\"problem\":\"What is it?\",\"solution\":{big},\"answer\":1}}");
    for (pred, acc) in [(big, "1.0"), (near, "0.0")] {
        let (ok, log) = eval(&mapped, pred, &["--answer-field", "solution"]);
        assert!(
            ok && log.contains(&format!("\"accuracy\":{acc}")),
            "mapped {pred}: {log}"
        );
    }
    let unmapped = format!("{{\"problem\":\"What is it?\",\"answer\":{big}}}");
    for (pred, acc) in [(big, "1.0"), (near, "0.0")] {
        let (ok, log) = eval(&unmapped, pred, &[]);
        assert!(
            ok && log.contains(&format!("\"accuracy\":{acc}")),
            "unmapped {pred}: {log}"
        );
    }
    // a column named by one flag and another's field: swapped names lose nothing
    let swapped = "{\"problem\":\"Q?\",\"answer\":\"not the gold\",\"final\":\"42\"}";
    let (ok, log) = eval(
        swapped,
        "42",
        &["--answer-field", "final", "--completion-field", "answer"],
    );
    assert!(ok && log.contains("\"accuracy\":1.0"), "{log}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_damaged_parquet_file_is_an_error_naming_it() {
    let d = tmp("bad");
    let bad = d.join("broken.parquet");
    let mut b = std::fs::read(root().join("models/fixtures/data/pairs.parquet")).unwrap();
    b.truncate(b.len() / 2);
    std::fs::write(&bad, &b).unwrap();
    let (ok, log) = ponder(&[
        "eval",
        "--data",
        bad.to_str().unwrap(),
        "--predictions",
        bad.to_str().unwrap(),
    ]);
    assert!(
        !ok && log.contains("broken.parquet") && log.contains("Parquet"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
