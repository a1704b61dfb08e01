//! Gradient checkpointing: a checkpointed decoder keeps only each layer's input and
//! recomputes the layer in the backward. The gradients are the plain graph's: bit for bit
//! on the CPU (the same ops in the same order), within GPU summation noise on the GPU;
//! with LoRA adapters and dropout too (the masks come from a seed, so the recomputation
//! draws the same ones). End to end, `ponder dpo --gradient-checkpointing` logs the run
//! the flag-less one does.

mod common;
use std::path::{Path, PathBuf};

use ponder::model::transformer::{Forward, LinearCtx};
use ponder::model::{LoadOpts, Model};
use ponder::train::data::Seq;
use ponder::train::loss;
use ponder::train::metrics;
use ponder::train::trainer::{train, Mode, TrainArgs};
use ponder::Device;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

/// Every trainable parameter's gradient after one SFT-style loss over three sequences of
/// different lengths (padded to one batch), with or without checkpointing.
fn grads(dev: Device, ckpt: bool, lora: bool) -> Vec<(String, Vec<f64>)> {
    let mut m = Model::load(
        &root().join("qwen2-tied"),
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: !lora,
        },
    )
    .unwrap();
    if lora {
        let targets: Vec<String> = ["q", "v", "gate", "down"].map(String::from).to_vec();
        m.net.add_lora(&targets, 4, 8.0, 0.25, 11).unwrap();
        // B starts at zero (so A's gradient would be zero): give it values
        common::randomise_lora_b(&mut m.net, dev, 40);
    }
    m.net.gradient_checkpointing = ckpt;
    let v = m.net.cfg.vocab_size as u32;
    let seqs: Vec<Seq> = [(9, 3), (14, 5), (6, 2)]
        .iter()
        .enumerate()
        .map(|(s, &(len, prompt_len))| Seq {
            ids: (0..len as u32)
                .map(|i| (i * 37 + s as u32 * 101 + 5) % v)
                .collect(),
            prompt_len,
        })
        .collect();
    let refs: Vec<&Seq> = seqs.iter().collect();
    let linear = LinearCtx {
        disable_adapters: false,
        dropout_seed: Some(1234),
        token_keys: None,
    };
    let lp = loss::sequence_logps(&m.net, &refs, linear, false).unwrap();
    loss::sft_loss(&lp, 20).unwrap().backward().unwrap();
    let params = if lora {
        m.net.lora_parameters()
    } else {
        m.net.named_parameters()
    };
    params
        .into_iter()
        .map(|(n, p)| {
            let g = p.grad().unwrap_or_else(|| panic!("no gradient for {n}"));
            (n, g.to_vec_f64().unwrap())
        })
        .collect()
}

#[test]
fn checkpointed_layers_give_the_plain_gradients_bit_for_bit_on_the_cpu() {
    for lora in [false, true] {
        let (plain, ckpt) = (
            grads(Device::Cpu, false, lora),
            grads(Device::Cpu, true, lora),
        );
        assert_eq!(plain.len(), ckpt.len());
        assert!(plain.len() > 4, "too few parameters compared");
        for ((n, a), (_, b)) in plain.iter().zip(&ckpt) {
            assert!(a.iter().any(|&x| x != 0.0), "{n}: an all-zero gradient");
            assert!(a == b, "{n} (lora {lora}): checkpointed gradient differs");
        }
    }
}

#[test]
fn checkpointed_layers_match_the_plain_gradients_on_the_gpu() {
    if !common::gpu_ok("checkpointing gpu") {
        return;
    }
    for lora in [false, true] {
        let (plain, ckpt) = (
            grads(Device::Gpu, false, lora),
            grads(Device::Gpu, true, lora),
        );
        for ((n, a), (_, b)) in plain.iter().zip(&ckpt) {
            let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
            common::assert_close(
                &format!("{n} (lora {lora}) on the gpu"),
                b,
                a,
                1e-4 * scale,
                1e-4,
            );
        }
        // and against the CPU's
        let cpu = grads(Device::Cpu, true, lora);
        for ((n, a), (_, b)) in cpu.iter().zip(&ckpt) {
            let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
            common::assert_close(
                &format!("{n} (lora {lora}) gpu vs cpu"),
                b,
                a,
                1e-3 * scale,
                1e-3,
            );
        }
    }
}

#[test]
fn a_checkpointed_forward_records_one_node_per_layer() {
    // what the backward will hold: each layer's output is a checkpoint node (its
    // activations were dropped), not the residual add that ends a plain layer
    for ckpt in [false, true] {
        let mut m = Model::load(
            &root().join("qwen2-tied"),
            LoadOpts {
                device: Device::Cpu,
                keep_16bit: false,
                trainable: true,
            },
        )
        .unwrap();
        m.net.gradient_checkpointing = ckpt;
        let out = m
            .net
            .forward(
                &[3, 14, 15, 9, 2, 6],
                2,
                3,
                Forward {
                    hidden_states: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let want = if ckpt { "checkpoint" } else { "add" };
        for h in &out.hidden[1..] {
            assert_eq!(h.op_name(), Some(want), "checkpointing {ckpt}");
        }
        // a pass without gradients records nothing either way
        let out = ponder::no_grad(|| {
            m.net
                .forward(&[3, 14, 15], 1, 3, Forward::default())
                .unwrap()
        });
        assert_eq!(out.logits.op_name(), None);
    }
}

#[test]
fn dpo_with_gradient_checkpointing_logs_the_plain_run() {
    let dir = common::scratch("ckpt");
    let run = |tag: &str, ckpt: bool| -> PathBuf {
        let (m, d, out) = (
            root().join("qwen2-tied"),
            root().join("train/arith_pairs.jsonl"),
            dir.join(tag),
        );
        #[rustfmt::skip]
        let mut flags = vec!["--model", m.to_str().unwrap(), "--data", d.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--lr", "5e-3", "--batch-size", "4", "--steps", "3", "--device", "cpu", "--quiet",
            "--ref-cache", dir.join(format!("{tag}.logps")).to_str().unwrap().to_string().leak()];
        if ckpt {
            flags.push("--gradient-checkpointing");
        }
        train(Mode::Dpo, &TrainArgs::from_flags(&flags).unwrap()).unwrap();
        out
    };
    let (plain, ckpt) = (run("plain", false), run("ckpt", true));
    let column = |out: &Path, k: &str| -> Vec<f64> {
        metrics::read(&out.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r[k].as_f64().unwrap())
            .collect()
    };
    for k in ["loss", "grad_norm", "rewards/margins", "logps/chosen"] {
        let (a, b) = (column(&plain, k), column(&ckpt, k));
        assert_eq!(a.len(), 3, "{k}");
        assert_eq!(a, b, "{k}: checkpointed run differs");
    }
}
