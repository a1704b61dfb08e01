//! ponder's trainers against PyTorch (models/reference/make_train_fixtures.py, whose
//! numbers equal TRL's DPOTrainer with bf16 off): per-example log-probs, the loss and every
//! parameter gradient of the first step, the losses and gradient norms of 5 AdamW steps,
//! and every DPO loss type. CPU 1e-4 relative; GPU 1e-3.

mod common;
use std::path::{Path, PathBuf};

use ponder::model::transformer::LinearCtx;
use ponder::model::weights::{open_file, Checkpoint};
use ponder::model::{LoadOpts, Model};
use ponder::train::data::{self, Seq, Truncation, TruncationMode};
use ponder::train::loss::{self, DpoParams, LossType};
use ponder::train::trainer::{train, Mode, TrainArgs};
use ponder::Device;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

fn reference(name: &str) -> Checkpoint {
    open_file(&root().join("train").join(name)).unwrap()
}

fn vals(r: &Checkpoint, k: &str) -> Vec<f64> {
    r.load_any(k).unwrap().to_vec_f64().unwrap()
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    let d = common::max_abs_diff(got, want);
    assert!(
        d <= tol * scale,
        "{what}: max |diff| {d:.3e} > {tol} x {scale:.3e}; got {:?} want {:?}",
        &got[..got.len().min(5)],
        &want[..want.len().min(5)]
    );
}

const NO_TRUNC: Truncation = Truncation {
    max_prompt_length: None,
    max_length: None,
    mode: TruncationMode::KeepStart,
};

fn args(mode: Mode, dev: Device, out: &Path) -> TrainArgs {
    let data = root().join("train").join(if mode == Mode::Dpo {
        "pairs.jsonl"
    } else {
        "sft.jsonl"
    });
    let (m, cache, dev) = (
        root().join("qwen2-tied"),
        out.join("ref.logps"),
        dev.to_string(),
    );
    // the reference settings: lr 1e-4 constant, no warmup, no clipping, one batch of 4
    #[rustfmt::skip]
    let flags = ["--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--lr", "1e-4", "--steps", "5", "--lr-scheduler", "constant", "--max-grad-norm", "0", "--batch-size", "4",
        "--device", &dev, "--quiet", "--ref-cache", cache.to_str().unwrap()];
    TrainArgs::from_flags(&flags).unwrap()
}

fn tmp(tag: &str) -> common::Scratch {
    common::scratch(&format!("train-{tag}"))
}

/// The loss against the reference's `loss`, then every parameter's gradient against
/// its `grad.<name>`.
fn loss_and_grads(what: &str, m: &Model, l: ponder::Tensor, r: &Checkpoint, dev: Device, tol: f64) {
    close(
        &format!("{what} loss ({dev})"),
        &[l.item().unwrap() as f64],
        &vals(r, "loss"),
        tol,
    );
    l.backward().unwrap();
    for (name, param) in m.net.named_parameters() {
        let g = param
            .grad()
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        close(
            &format!("{what} grad {name} ({dev})"),
            &g.to_vec_f64().unwrap(),
            &vals(r, &format!("grad.{name}")),
            tol,
        );
    }
}

fn first_step_dpo(dev: Device, tol: f64) {
    let r = reference("dpo.safetensors");
    let m = Model::load(
        &root().join("qwen2-tied"),
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: true,
        },
    )
    .unwrap();
    let (pairs, _) = data::load_pairs(
        &root().join("train/pairs.jsonl"),
        m.tok.as_ref().unwrap(),
        &NO_TRUNC,
    )
    .unwrap();
    let seqs: Vec<&Seq> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    let n = pairs.len();
    let lp = loss::sequence_logps(&m.net, &seqs, LinearCtx::default(), true).unwrap();
    let sums = lp.sum.to_vec_f64().unwrap();
    close(
        &format!("logps chosen ({dev})"),
        &sums[..n],
        &vals(&r, "logps.chosen"),
        tol,
    );
    close(
        &format!("logps rejected ({dev})"),
        &sums[n..],
        &vals(&r, "logps.rejected"),
        tol,
    );
    // policy = reference
    let p = DpoParams::sigmoid(0.1);
    let (l, _) = loss::dpo_loss(&lp, &sums[..n], &sums[n..], &p).unwrap();
    loss_and_grads("dpo", &m, l, &r, dev, tol);
}

fn first_step_sft(dev: Device, tol: f64) {
    let r = reference("sft.safetensors");
    let m = Model::load(
        &root().join("qwen2-tied"),
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: true,
        },
    )
    .unwrap();
    let (ex, _) = data::load_sft(
        &root().join("train/sft.jsonl"),
        m.tok.as_ref().unwrap(),
        &NO_TRUNC,
    )
    .unwrap();
    let seqs: Vec<&Seq> = ex.iter().collect();
    let lp = loss::sequence_logps(&m.net, &seqs, LinearCtx::default(), false).unwrap();
    let tokens: usize = ex.iter().map(|s| s.completion_len()).sum();
    let l = loss::sft_loss(&lp, tokens).unwrap();
    loss_and_grads("sft", &m, l, &r, dev, tol);
}

fn five_steps(mode: Mode, dev: Device, tol: f64) -> common::Scratch {
    let out = tmp(&format!("{mode:?}-{dev}"));
    let a = args(mode, dev, &out);
    train(mode, &a).unwrap();
    let rows = ponder::train::metrics::read(&out.join("metrics.jsonl")).unwrap();
    let get = |k: &str| {
        rows.iter()
            .map(|r| r[k].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let r = reference(if mode == Mode::Dpo {
        "dpo.safetensors"
    } else {
        "sft.safetensors"
    });
    close(
        &format!("{mode:?} 5-step losses ({dev})"),
        &get("loss"),
        &vals(&r, "steps.loss"),
        tol,
    );
    close(
        &format!("{mode:?} 5-step grad norms ({dev})"),
        &get("grad_norm"),
        &vals(&r, "steps.grad_norm"),
        tol,
    );
    out
}

/// Every loss type on the model after 5 steps, against the starting model as reference.
fn loss_types(trained: &Path, dev: Device, tol: f64) {
    let r = reference("dpo.safetensors");
    let start = Model::load(
        &root().join("qwen2-tied"),
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
    let now = Model::load(
        trained,
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap();
    let (pairs, _) = data::load_pairs(
        &root().join("train/pairs.jsonl"),
        start.tok.as_ref().unwrap(),
        &NO_TRUNC,
    )
    .unwrap();
    let seqs: Vec<&Seq> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    let n = pairs.len();
    let refs = loss::sequence_logps(&start.net, &seqs, LinearCtx::default(), false)
        .unwrap()
        .sum
        .to_vec_f64()
        .unwrap();
    let pol = loss::sequence_logps(&now.net, &seqs, LinearCtx::default(), false).unwrap();
    for (kind, name) in [
        (LossType::Sigmoid, "sigmoid"),
        (LossType::Ipo, "ipo"),
        (LossType::Hinge, "hinge"),
        (LossType::Robust, "robust"),
    ] {
        let p = DpoParams {
            beta: 0.1,
            loss_type: kind,
            label_smoothing: if kind == LossType::Ipo { 0.0 } else { 0.1 },
            rpo_alpha: None,
            length_normalize: false,
        };
        let (l, _) = loss::dpo_loss(&pol, &refs[..n], &refs[n..], &p).unwrap();
        close(
            &format!("loss type {name} ({dev})"),
            &[l.item().unwrap() as f64],
            &vals(&r, &format!("loss.{name}")),
            tol,
        );
    }
}

#[test]
fn dpo_matches_pytorch_cpu() {
    first_step_dpo(Device::Cpu, 1e-4);
    let out = five_steps(Mode::Dpo, Device::Cpu, 1e-4);
    loss_types(&out, Device::Cpu, 1e-4);
}

#[test]
fn sft_matches_pytorch_cpu() {
    first_step_sft(Device::Cpu, 1e-4);
    five_steps(Mode::Sft, Device::Cpu, 1e-4);
}

#[test]
fn dpo_matches_pytorch_gpu() {
    if common::gpu_ok("dpo parity") {
        first_step_dpo(Device::Gpu, 1e-3);
        let out = five_steps(Mode::Dpo, Device::Gpu, 1e-3);
        loss_types(&out, Device::Gpu, 1e-3);
    }
}

#[test]
fn sft_matches_pytorch_gpu() {
    if common::gpu_ok("sft parity") {
        first_step_sft(Device::Gpu, 1e-3);
        five_steps(Mode::Sft, Device::Gpu, 1e-3);
    }
}
