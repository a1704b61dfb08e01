//! Parity with PyTorch/transformers on the committed fixtures (models/fixtures, made by
//! models/reference/make_fixtures.py): logits and per-layer hidden states, the masked SFT
//! loss and every parameter gradient. CPU: logits/hidden max |diff| <= 1e-4 and gradients
//! <= 1e-4 of each tensor's max |value|; GPU: 1e-3 for both.

mod common;
use std::path::{Path, PathBuf};

use ponder::model::weights::{open_file, Checkpoint};
use ponder::model::{Forward, LoadOpts, Model};
use ponder::tensor::CpuData;
use ponder::{Device, Tensor};

const FIXTURES: [&str; 4] = ["llama-gqa", "qwen2-tied", "llama3-rope", "qwen2-bf16"];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

fn reference(name: &str) -> Checkpoint {
    open_file(&dir(name).join("reference.safetensors")).unwrap()
}

fn ids(r: &Checkpoint, key: &str) -> Vec<u32> {
    r.load_any(key).unwrap().to_vec_u32().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    common::max_abs_diff(&a.to_vec_f64().unwrap(), &b.to_vec_f64().unwrap())
}

fn forward_parity(dev: Device, tol: f64) {
    for name in FIXTURES {
        let r = reference(name);
        let m = Model::load(
            &dir(name),
            LoadOpts {
                device: dev,
                keep_16bit: true,
                trainable: false,
            },
        )
        .unwrap();
        let x = ids(&r, "input_ids");
        let out = m
            .net
            .forward(
                &x,
                1,
                x.len(),
                Forward {
                    hidden_states: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let logits = out.logits.reshape(&[x.len(), m.cfg.vocab_size]).unwrap();
        let d = max_diff(&logits, &r.load_any("logits").unwrap());
        eprintln!("{name} on {dev}: logits max |diff| {d:.2e}");
        assert!(
            d <= tol,
            "{name} on {dev}: logits differ by {d:.3e} (> {tol})"
        );
        for (i, h) in out.hidden.iter().enumerate() {
            let want = r.load_any(&format!("hidden.{i}")).unwrap();
            let d = max_diff(&h.reshape(want.shape()).unwrap(), &want);
            assert!(
                d <= tol,
                "{name} on {dev}: hidden state {i} differs by {d:.3e} (> {tol})"
            );
        }
        let fnorm = out.final_norm.unwrap();
        let want = r.load_any("final_norm").unwrap();
        let d = max_diff(&fnorm.reshape(want.shape()).unwrap(), &want);
        assert!(d <= tol, "{name} on {dev}: final norm differs by {d:.3e}");
    }
}

/// HF's causal-LM loss: logits[:-1] against labels[1:], mean over labels != -100.
fn sft_loss(m: &Model, x: &[u32], labels: &[u32]) -> Tensor {
    let t = x.len();
    let out = m.net.forward(x, 1, t, Forward::default()).unwrap();
    let logits = out
        .logits
        .reshape(&[t, m.cfg.vocab_size])
        .unwrap()
        .narrow(0, 0, t - 1)
        .unwrap();
    let tg: Vec<i32> = labels[1..].iter().map(|&l| l as i32).collect();
    let tg = Tensor::from_cpu_data(CpuData::I32(tg), &[t - 1])
        .unwrap()
        .to_device(m.net.device)
        .unwrap();
    logits.cross_entropy(&tg, -100).unwrap()
}

fn gradient_parity(dev: Device, tol: f64) {
    for name in FIXTURES {
        let r = reference(name);
        let m = Model::load(
            &dir(name),
            LoadOpts {
                device: dev,
                keep_16bit: false,
                trainable: true,
            },
        )
        .unwrap();
        let (x, labels) = (ids(&r, "sft.input_ids"), ids(&r, "sft.labels"));
        let loss = sft_loss(&m, &x, &labels);
        let want = r.load_any("sft.loss").unwrap().to_vec_f64().unwrap()[0];
        let got = loss.item().unwrap() as f64;
        assert!(
            (got - want).abs() <= tol * want.abs().max(1.0),
            "{name} on {dev}: loss {got} vs {want}"
        );
        loss.backward().unwrap();
        let mut worst = (0.0f64, String::new());
        for (pname, p) in m.net.named_parameters() {
            let want = r.load_any(&format!("grad.{pname}")).unwrap();
            let g = p
                .grad()
                .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let scale = want
                .to_vec_f64()
                .unwrap()
                .iter()
                .fold(0.0f64, |a, v| a.max(v.abs()))
                .max(1e-12);
            let rel = max_diff(&g, &want) / scale;
            if rel > worst.0 {
                worst = (rel, pname.clone());
            }
            assert!(
                rel <= tol,
                "{name} on {dev}: gradient of {pname} differs by {rel:.3e} of its max (> {tol})"
            );
        }
        eprintln!(
            "{name} on {dev}: loss {got:.6} (torch {want:.6}), worst gradient {:.2e} of max ({})",
            worst.0, worst.1
        );
    }
}

#[test]
fn forward_matches_pytorch_cpu() {
    forward_parity(Device::Cpu, 1e-4);
}

#[test]
fn gradients_match_pytorch_cpu() {
    gradient_parity(Device::Cpu, 1e-4);
}

#[test]
fn forward_matches_pytorch_gpu() {
    if common::gpu_ok("parity forward") {
        forward_parity(Device::Gpu, 1e-3);
    }
}

#[test]
fn gradients_match_pytorch_gpu() {
    if common::gpu_ok("parity gradients") {
        gradient_parity(Device::Gpu, 1e-3);
    }
}

/// Reward models (models/reference/make_reward_fixtures.py): the score head at the last
/// non-pad token of each chat-rendered (instruction, answer), against transformers' padded
/// batch, within `tol`. The ids ponder renders and tokenises must equal transformers' too.
fn reward_parity(dev: Device, tol: f64) {
    use ponder::model::reward::RewardModel;
    for name in ["qwen2-reward", "llama-reward"] {
        let r = reference(name);
        let rm = RewardModel::load(&dir(name), dev).unwrap();
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir(name).join("reference.json")).unwrap(),
        )
        .unwrap();
        let pairs = meta["pairs"].as_array().unwrap();
        let x = r.load_any("input_ids").unwrap();
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let x = x.to_vec_u32().unwrap();
        let mask = ids(&r, "attention_mask");
        let want = r.load_any("scores").unwrap().to_vec_f64().unwrap();
        let nl = rm.num_labels();
        assert_eq!(want.len(), b * nl);
        let mut worst = 0.0f64;
        for i in 0..b {
            // the unpadded sequence, wherever the padding side put the pads
            let row: Vec<u32> = (0..t)
                .filter(|&j| mask[i * t + j] == 1)
                .map(|j| x[i * t + j])
                .collect();
            let p = &pairs[i];
            let enc = rm
                .encode(
                    p["instruction"].as_str().unwrap(),
                    p["answer"].as_str().unwrap(),
                )
                .unwrap();
            assert_eq!(enc, row, "{name} row {i}: ids differ from transformers'");
            let got = rm.score_ids(&row).unwrap();
            let d = common::max_abs_diff(
                &got.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &want[i * nl..(i + 1) * nl],
            );
            worst = worst.max(d);
        }
        eprintln!("{name} on {dev}: reward scores max |diff| {worst:.2e}");
        assert!(
            worst <= tol,
            "{name} on {dev}: scores differ by {worst:.3e} (> {tol})"
        );
    }
    // the one-label model is a judge; the three-label one is refused as a judge
    let q = RewardModel::load(&dir("qwen2-reward"), dev).unwrap();
    let s = q.score("Say hello.", "Hello!").unwrap();
    let want = reference("qwen2-reward")
        .load_any("scores")
        .unwrap()
        .to_vec_f64()
        .unwrap()[3];
    assert!((s - want).abs() <= tol, "judge score {s} vs {want}");
    let l = RewardModel::load(&dir("llama-reward"), dev).unwrap();
    let err = l.score("Say hello.", "Hello!").unwrap_err().to_string();
    assert!(err.contains("num_labels 1"), "{err}");
}

#[test]
fn reward_model_scores_match_transformers_on_cpu() {
    reward_parity(Device::Cpu, 1e-4);
}

#[test]
fn reward_model_scores_match_transformers_on_gpu() {
    if common::gpu_ok("reward_parity") {
        reward_parity(Device::Gpu, 1e-3);
    }
}

#[test]
fn a_reward_model_is_not_loaded_as_a_causal_lm_nor_the_reverse() {
    let opts = LoadOpts {
        device: Device::Cpu,
        keep_16bit: true,
        trainable: false,
    };
    let err = Model::load(&dir("qwen2-reward"), opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("SequenceClassification"), "{err}");
    let err = ponder::model::reward::RewardModel::load(&dir("qwen2-tied"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("causal LM"), "{err}");
}
