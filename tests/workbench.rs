//! The reasoning workbench: the synthetic task's files, tokenizer training, calculator
//! decoding through real tokenizers (digits split, and digits merged GPT-2 style),
//! evaluation from predictions and from a model, and the streaming detokeniser.

mod common;
use std::path::Path;
use std::process::Command;

use ponder::model::generate::{generate_steered, SamplingParams, Steer};
use ponder::model::tokenizer_train::{save_dir, train_bpe, BpeOpts};
use ponder::model::{Config, Tok, Transformer};
use ponder::recipes::synth::{generate, SynthConfig};
use ponder::recipes::Calculator;
use ponder::{DType, Device};

fn ponder(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .output()
        .expect("run ponder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("wb-{tag}"))
}

/// A tokenizer trained on synthetic problems, saved to a directory and loaded back.
fn tokenizer(split_digits: bool, dir: &Path) -> Tok {
    let s = generate(&SynthConfig {
        n_train: 300,
        n_dev: 10,
        n_test: 10,
        ..Default::default()
    })
    .unwrap();
    let texts: Vec<String> = s
        .train
        .iter()
        .flat_map(|p| [format!("{}\n{}", p.question, p.short), p.long.clone()])
        .collect();
    let t = train_bpe(
        texts,
        &BpeOpts {
            vocab_size: 600,
            min_frequency: 2,
            split_digits,
        },
    )
    .unwrap();
    save_dir(&t, dir, 512).unwrap();
    Tok::load(dir).unwrap()
}

/// A small random Llama whose vocabulary fits `tok`.
fn random_llama(tok: &Tok) -> Transformer {
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": tok.vocab_size(), "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": true
    });
    let cfg = Config::from_json(Path::new("config.json"), cfg).unwrap();
    Transformer::random(&cfg, Device::Cpu, DType::F32, 7).unwrap()
}

#[test]
fn synth_cli_is_deterministic_and_its_splits_are_disjoint() {
    let (a, b) = (tmp("synth-a"), tmp("synth-b"));
    for d in [&a, &b] {
        let (ok, out, err) = ponder(&[
            "data",
            "synth",
            "--out",
            d.to_str().unwrap(),
            "--seed",
            "3",
            "--n-train",
            "150",
            "--n-dev",
            "20",
            "--n-test",
            "30",
        ]);
        assert!(ok, "{out}{err}");
    }
    let mut questions = std::collections::HashSet::new();
    for split in ["train", "dev", "test"] {
        for style in ["short", "long"] {
            let name = format!("{split}-{style}.jsonl");
            let (x, y) = (
                std::fs::read(a.join(&name)).unwrap(),
                std::fs::read(b.join(&name)).unwrap(),
            );
            assert_eq!(x, y, "{name} differs between two runs with one seed");
        }
        let text = std::fs::read_to_string(a.join(format!("{split}-short.jsonl"))).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let completion = v["completion"].as_str().unwrap();
            let answer = v["answer"].as_str().unwrap();
            // the gold rationale ends with its answer, and the checker agrees
            assert!(
                completion.ends_with(&format!("#### {answer}")),
                "{completion}"
            );
            assert!(ponder::recipes::answer::check(completion, answer).1);
            assert!(
                questions.insert(v["question"].as_str().unwrap().to_string()),
                "a question appears twice across splits"
            );
        }
    }
    assert_eq!(questions.len(), 200);
    // ThinkPO's mixed SFT set: each training problem once, its long rationale, or the
    // short one where it has a single step
    let lines = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(a.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (mixed, short, long) = (
        lines("train-mixed.jsonl"),
        lines("train-short.jsonl"),
        lines("train-long.jsonl"),
    );
    assert_eq!(mixed.len(), 150);
    let mut one_step = 0;
    for ((m, s), l) in mixed.iter().zip(&short).zip(&long) {
        let steps = m["steps"].as_u64().unwrap();
        one_step += (steps == 1) as usize;
        assert_eq!(m, if steps == 1 { s } else { l });
    }
    assert!(
        one_step > 0 && one_step < 150,
        "{one_step} one-step problems"
    );
    let (ok, out, err) = ponder(&[
        "data",
        "synth",
        "--out",
        a.to_str().unwrap(),
        "--max-steps",
        "7",
    ]);
    assert!(!ok && (out + &err).contains("max_steps"));
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// Calculator decoding through the steering hook, K samples of two prompts in one batch:
/// each prompt ends inside an open annotation, which must be completed with the right
/// result and closed, whatever the random model would have said.
fn calculator_completes_open_annotations(tok: &Tok) {
    let net = random_llama(tok);
    let prompts_text = ["Natalia sold <<48/2=", "First <<1+1=2>>2, then <<(3+4)*6="];
    let want = ["24>>", "42>>"];
    let prompts: Vec<Vec<u32>> = prompts_text
        .iter()
        .map(|p| tok.encode(p, false).unwrap())
        .collect();
    let p = SamplingParams {
        temperature: 0.8,
        max_new_tokens: 8,
        seed: 11,
        ignore_eos: true,
        ..Default::default()
    };
    let mut calc = Calculator::new(tok);
    let mut hook = |_: usize, text: &str| calc.force(text);
    let steer: &mut Steer<'_> = &mut hook;
    let (seqs, _) = generate_steered(
        &net,
        &prompts,
        3,
        &p,
        Some(tok),
        &mut |_, _| {},
        Some(steer),
    )
    .unwrap();
    assert_eq!(seqs.len(), 6);
    for s in &seqs {
        let text = tok.decode(&s.ids, false).unwrap();
        assert!(
            text.starts_with(want[s.prompt]),
            "prompt {:?} sample {}: generated {text:?}",
            prompts_text[s.prompt],
            s.sample
        );
        assert!(s.forced >= 1, "nothing was forced");
        // the forced ids are exactly the ones the tokenizer gives that text in context
        let forced_text = tok.decode(&s.ids[..s.forced], false).unwrap();
        assert_eq!(forced_text, want[s.prompt]);
        assert_eq!(s.logprobs.len(), s.ids.len());
        assert!(s.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
    }
    assert_eq!(calc.fired, 6, "one forcing per row");
}

#[test]
fn calculator_decoding_with_the_bundled_digit_splitting_tokenizer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ponder-tiny/sft-short");
    let tok = Tok::load(&dir).unwrap();
    // every digit is its own token here
    assert_eq!(tok.encode("24", false).unwrap().len(), 2);
    calculator_completes_open_annotations(&tok);
    // and the bundled model itself, continuing a prompt that ends inside an annotation
    let m = ponder::model::Model::load(
        &dir,
        ponder::model::LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
    let prompt = tok.encode("Mia has 48 marbles. She splits them into 2 equal parts and keeps one part. How many marbles does Mia have now?\nDivide by 2: 48 / 2 = <<48/2=", false).unwrap();
    let p = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 12,
        ..Default::default()
    };
    let mut calc = Calculator::new(&tok);
    let mut hook = |_: usize, text: &str| calc.force(text);
    let steer: &mut Steer<'_> = &mut hook;
    let (seqs, _) = generate_steered(
        &m.net,
        &[prompt],
        1,
        &p,
        Some(&tok),
        &mut |_, _| {},
        Some(steer),
    )
    .unwrap();
    let text = tok.decode(&seqs[0].ids, true).unwrap();
    assert!(text.starts_with("24>>"), "{text:?}");
}

#[test]
fn calculator_decoding_with_gpt2_style_tokenizer_that_merges_digits() {
    let d = tmp("tok-merge");
    let tok = tokenizer(false, &d);
    // multi-digit numbers are merged into single tokens here
    assert_eq!(
        tok.encode("24", false).unwrap().len(),
        1,
        "24 should be one token"
    );
    calculator_completes_open_annotations(&tok);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn stream_decoder_matches_a_full_decode() {
    let d = tmp("tok-stream");
    let tok = tokenizer(false, &d);
    let text = "Mia has 48 marbles — 12 € each. <<48/2=24>>24\n#### 24 ü日本";
    let ids = tok.encode(text, false).unwrap();
    let mut dec = ponder::model::tokenizer::StreamDecoder::new();
    let mut pieces = String::new();
    for &id in &ids {
        pieces.push_str(dec.push(&tok, id).unwrap());
    }
    assert_eq!(pieces, text);
    assert_eq!(dec.text(), tok.decode(&ids, false).unwrap());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eval_scores_predictions_and_reports_json() {
    let d = tmp("eval-pred");
    let data = d.join("data.jsonl");
    let pred = d.join("pred.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"question\": \"q1\", \"answer\": \"Natalia sold 48/2 = <<48/2=24>>24 clips.\\n#### 72\"}\n",
            "{\"prompt\": \"q2\", \"answer\": \"0.25\"}\n",
            "{\"prompt\": \"q3\", \"answer\": \"5\"}\n",
            "{\"prompt\": \"q4\", \"answer\": \"8\"}\n",
        ),
    )
    .unwrap();
    std::fs::write(
        &pred,
        concat!(
            "{\"completion\": \"<think>maybe 70</think> so 24+48 = <<24+48=72>>72\\n#### 72\"}\n",
            "{\"completion\": \"That is \\\\boxed{25\\\\%}.\"}\n",
            "{\"completion\": \"#### 4\\n#### 6\"}\n",
            "{\"completion\": \"I do not know.\"}\n",
        ),
    )
    .unwrap();
    let out = d.join("records.jsonl");
    let (ok, stdout, err) = ponder(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--predictions",
        pred.to_str().unwrap(),
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{err}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["n"], 4);
    assert!((r["accuracy"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{r}");
    assert!(
        (r["parse_failures"].as_f64().unwrap() - 0.25).abs() < 1e-12,
        "{r}"
    );
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0]["extracted"], "72");
    assert_eq!(recs[0]["gold"], "72");
    assert_eq!(recs[2]["extracted"], "6");
    assert_eq!(recs[2]["correct"], false);
    assert!(recs[3]["extracted"].is_null());
    for k in ["index", "completion", "extracted", "gold", "correct"] {
        assert!(recs[1].get(k).is_some(), "record lacks {k}");
    }
    // a predictions file of the wrong length is an error naming both counts
    std::fs::write(&pred, "{\"completion\": \"1\"}\n").unwrap();
    let (ok, stdout, err) = ponder(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--predictions",
        pred.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("1 predictions for 4 questions"),
        "{stdout}{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eval_generates_with_a_model_and_the_calculator() {
    // a random model trained on nothing: its accuracy is whatever it is, but every
    // question gets a completion, lengths are counted and the calculator is reported
    let d = tmp("eval-model");
    let tokdir = d.join("tok");
    let tok = tokenizer(true, &tokdir);
    let net = random_llama(&tok);
    let model = d.join("model");
    ponder::model::save::save_model(&net, Some(&tokdir), &model, DType::F32).unwrap();
    let data = d.join("data.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"A <<6*7=\", \"answer\": \"42\"}\n{\"prompt\": \"B <<9-2=\", \"answer\": \"7\"}\n{\"prompt\": \"C\", \"answer\": \"3\"}\n",
    )
    .unwrap();
    let out = d.join("rec.jsonl");
    let (ok, stdout, err) = ponder(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--calculator",
        "--max-new-tokens",
        "6",
        "--samples",
        "2",
        "--temperature",
        "0.7",
        "--format",
        "json",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}{err}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["n"], 3);
    assert_eq!(r["samples"], 2);
    assert!(r["mean_tokens"].as_f64().unwrap() > 0.0);
    assert_eq!(r["calculator_calls"], 4, "{r}");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 6);
    assert!(recs[0]["completion"].as_str().unwrap().starts_with("42>>"));
    assert!(recs[2]["completion"].as_str().unwrap().starts_with("7>>"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tokenizer_train_and_init_make_a_loadable_model() {
    let d = tmp("init");
    let (ok, o, e) = ponder(&[
        "data",
        "synth",
        "--out",
        d.join("data").to_str().unwrap(),
        "--n-train",
        "100",
        "--n-dev",
        "5",
        "--n-test",
        "5",
    ]);
    assert!(ok, "{o}{e}");
    let (ok, o, e) = ponder(&[
        "tokenizer",
        "train",
        "--files",
        d.join("data/corpus.txt").to_str().unwrap(),
        "--out",
        d.join("tok").to_str().unwrap(),
        "--vocab-size",
        "320",
    ]);
    assert!(ok, "{o}{e}");
    let cfg = d.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
            "tie_word_embeddings": true}"#,
    )
    .unwrap();
    let m = d.join("model");
    let (ok, o, e) = ponder(&[
        "init",
        "--config",
        cfg.to_str().unwrap(),
        "--tokenizer",
        d.join("tok").to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--seed",
        "1",
    ]);
    assert!(ok, "{o}{e}");
    let loaded = ponder::model::Model::load(
        &m,
        ponder::model::LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
    assert_eq!(loaded.cfg.vocab_size, 320);
    assert_eq!(loaded.tokenizer().unwrap().eos_ids.len(), 1);
    let _ = std::fs::remove_dir_all(&d);
}

/// The log-probs recorded while sampling are the reference's log-probs: equal to a
/// separate reference pass over the same ids within 1e-5, so a recipe that trains on its
/// own samples needs no reference forward. Then one in-memory DPO step with them as the
/// reference starts at loss ln 2 (policy = reference).
#[test]
fn sampled_logprobs_are_a_free_reference() {
    use ponder::model::generate::generate;
    use ponder::model::transformer::LinearCtx;
    use ponder::train::data::{Pair, Seq};
    use ponder::train::loss::{sequence_logps, DpoParams};
    use ponder::train::optim::{Schedule, Scheduler};
    use ponder::train::step::{MicroBatch, Trainer};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/qwen2-tied");
    let m = ponder::model::Model::load(
        &dir,
        ponder::model::LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: true,
        },
    )
    .unwrap();
    let tok = m.tokenizer().unwrap();
    let prompts: Vec<Vec<u32>> = ["What is 12 + 30?", "Count to five:"]
        .iter()
        .map(|p| tok.encode(p, false).unwrap())
        .collect();
    let p = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: 12,
        seed: 5,
        ignore_eos: true,
        ..Default::default()
    };
    let (seqs, _) = generate(&m.net, &prompts, 3, &p, Some(tok), &mut |_, _| {}).unwrap();
    let full: Vec<Seq> = seqs
        .iter()
        .map(|s| Seq {
            ids: [prompts[s.prompt].clone(), s.ids.clone()].concat(),
            prompt_len: prompts[s.prompt].len(),
        })
        .collect();
    let items: Vec<(&[u32], &[u32])> = full
        .iter()
        .map(|s| (&s.ids[..s.prompt_len], &s.ids[s.prompt_len..]))
        .collect();
    let scores = ponder::model::score::score_completions(&m.net, &items, 4).unwrap();
    let pass: Vec<f64> = scores
        .iter()
        .flat_map(|c| c.per_token.iter().map(|&x| x as f64))
        .collect();
    // the batched scorer agrees with the differentiable log-probs it is built on
    let refs: Vec<&Seq> = full.iter().collect();
    let lp = {
        let _ng = ponder::NoGradGuard::new();
        sequence_logps(&m.net, &refs, LinearCtx::default(), false).unwrap()
    };
    common::assert_close(
        "scorer vs sequence_logps",
        &pass,
        &lp.per_token.to_vec_f64().unwrap(),
        1e-6,
        0.0,
    );
    let recorded: Vec<f64> = seqs
        .iter()
        .flat_map(|s| s.logprobs.iter().map(|&x| x as f64))
        .collect();
    common::assert_close("recorded vs reference pass", &recorded, &pass, 1e-5, 0.0);

    // pair sample 0 (chosen) with sample 1 (rejected) of each prompt; reference = recorded
    let pairs: Vec<Pair> = (0..2)
        .map(|q| Pair {
            chosen: full[3 * q].clone(),
            rejected: full[3 * q + 1].clone(),
        })
        .collect();
    let sum = |r: usize| seqs[r].logprobs.iter().map(|&x| x as f64).sum::<f64>();
    let reference = (
        (0..2).map(|q| sum(3 * q)).collect(),
        (0..2).map(|q| sum(3 * q + 1)).collect(),
    );
    let schedule = Schedule {
        kind: Scheduler::Constant,
        lr: 1e-3,
        warmup_steps: 0,
        total_steps: 1,
        min_lr: 1e-3,
    };
    let dpo = DpoParams::sigmoid(0.1);
    let mut t = Trainer::new(m.net, false, schedule, 0.0, 1.0, dpo, 0).unwrap();
    let st = t
        .step(&[MicroBatch::Dpo {
            pairs: pairs.iter().collect(),
            reference: Some(reference),
        }])
        .unwrap();
    assert!(
        (st.loss - std::f64::consts::LN_2).abs() < 1e-5,
        "loss {}",
        st.loss
    );
    assert_eq!(st.ref_forwards, 0);
    assert_eq!(t.steps_done(), 1);
}
