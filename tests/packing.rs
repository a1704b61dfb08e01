//! Padding-free packing: the sequences of a batch lie end to end in one row, attention is
//! block-diagonal causal (per-query key ranges, cu_seqlens style), RoPE restarts at each
//! sequence and the log-prob sums keep to their own sequence. Everything a padded batch
//! computes comes out the same: attention against each sequence alone, and the DPO and
//! SFT losses and every parameter gradient against the padded pass, on the CPU (1e-6)
//! and the GPU (1e-4, and the GPU's variable-length kernels against the CPU's).

mod common;
use std::path::{Path, PathBuf};

use ponder::model::transformer::LinearCtx;
use ponder::model::{LoadOpts, Model};
use ponder::ops::attention::{AttnOpts, SharedGroup};
use ponder::train::data::Seq;
use ponder::train::loss::{self, DpoParams};
use ponder::{Device, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

/// Sequence lengths packed into one row: a lone token, boundaries inside and across the
/// CPU kernel's 64-row query tiles and the GPU's 64-query workgroups.
const LENS: [usize; 5] = [1, 40, 70, 19, 3];

/// q `(1, L, NH, HD)` and k, v `(1, L, NKV, HD)` of the packed row.
fn packed_qkv(nh: usize, nkv: usize, hd: usize, s: u64) -> [Tensor; 3] {
    let l: usize = LENS.iter().sum();
    [
        common::randn(&[1, l, nh, hd], s),
        common::randn(&[1, l, nkv, hd], s + 1),
        common::randn(&[1, l, nkv, hd], s + 2),
    ]
}

fn packed_opts(dev: Device) -> AttnOpts {
    let l: usize = LENS.iter().sum();
    let mut cu = vec![0];
    for n in LENS {
        cu.push(cu.last().unwrap() + n);
    }
    let r = AttnOpts::packed_ranges(&[cu], l);
    AttnOpts {
        causal: true,
        kv_ranges: Some(Tensor::from_u32(r, &[1, l, 2], dev).unwrap()),
        ..Default::default()
    }
}

/// Attention over q, k, v (as fresh leaves) under `opts`, backpropagated from `dout`:
/// out, dq, dk and dv.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttnOpts, dout: &Tensor) -> [Vec<f64>; 4] {
    let leaf = |x: &Tensor| x.detach().contiguous().unwrap().requires_grad_();
    let (q, k, v) = (leaf(q), leaf(k), leaf(v));
    let out = Tensor::attention(&q, &k, &v, opts).unwrap();
    out.mul(dout)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    [
        out.to_vec_f64().unwrap(),
        q.grad().unwrap().to_vec_f64().unwrap(),
        k.grad().unwrap().to_vec_f64().unwrap(),
        v.grad().unwrap().to_vec_f64().unwrap(),
    ]
}

/// out, dq, dk and dv of a packed row against the same computed alone: f32 sums taken in
/// another order (other tiles, other tasks), so within 1e-6 of the largest value.
fn same_as_alone(what: &str, got: &[Vec<f64>; 4], want: &[Vec<f64>; 4]) {
    for (i, name) in ["out", "dq", "dk", "dv"].iter().enumerate() {
        assert!(want[i].iter().any(|&x| x != 0.0), "{what} {name}: all zero");
        let scale = want[i].iter().fold(1.0f64, |m, x| m.max(x.abs()));
        common::assert_close(
            &format!("{what} {name} vs alone"),
            &got[i],
            &want[i],
            1e-6 * scale,
            1e-6,
        );
    }
}

fn causal() -> AttnOpts {
    AttnOpts {
        causal: true,
        ..Default::default()
    }
}

#[test]
fn packed_attention_is_each_sequence_attending_alone() {
    let (nh, nkv, hd) = (4, 2, 16);
    let s = common::seed("packed attention");
    let [q, k, v] = packed_qkv(nh, nkv, hd, s);
    let l: usize = LENS.iter().sum();
    let dout = common::randn(&[1, l, nh, hd], s + 3);
    let got = attend(&q, &k, &v, &packed_opts(Device::Cpu), &dout);
    // each sequence alone, plain causal attention over its own (1, n) batch
    let mut want: [Vec<f64>; 4] = Default::default();
    let mut at = 0;
    for n in LENS {
        let cut = |x: &Tensor| x.narrow(1, at, n).unwrap();
        let alone = attend(&cut(&q), &cut(&k), &cut(&v), &causal(), &cut(&dout));
        for (w, x) in want.iter_mut().zip(alone) {
            w.extend(x);
        }
        at += n;
    }
    same_as_alone("packed", &got, &want);
}

#[test]
fn packed_attention_gpu_matches_cpu() {
    if !common::gpu_ok("packed attention gpu") {
        return;
    }
    let s = common::seed("packed attention gpu");
    // one kv head for two query heads, and Qwen2.5-0.5B's seven
    for (nh, nkv, hd) in [(4, 2, 16), (7, 1, 64)] {
        let [q, k, v] = packed_qkv(nh, nkv, hd, s);
        common::gpu_vs_cpu(
            &format!("packed attention {nh}/{nkv}x{hd}"),
            &[q, k, v],
            true,
            1e-3,
            |x| Tensor::attention(&x[0], &x[1], &x[2], &packed_opts(x[0].device())),
        );
    }
}

/// Answers sharing a prompt, as groups `(prompt, answers)` laid end to end in one row:
/// three answers after a 3-token prompt (one of a single token), one after a 1-token
/// prompt, and a lone sequence; boundaries inside and across query and key tiles. The
/// third answer (154..264) holds whole 64-query tiles (192..255) whose queries all skip
/// whole key tiles (64..127) of the answers before theirs.
const GROUPS: [(usize, &[usize]); 3] = [(3, &[150, 1, 110]), (1, &[30]), (19, &[])];

fn shared_groups() -> (Vec<SharedGroup>, usize) {
    let mut at = 0;
    let groups: Vec<SharedGroup> = GROUPS
        .iter()
        .map(|&(prompt, answers)| {
            let g = SharedGroup {
                start: at,
                prompt,
                answers: answers.to_vec(),
            };
            at = g.end();
            g
        })
        .collect();
    (groups, at)
}

fn shared_opts(dev: Device) -> AttnOpts {
    let (groups, l) = shared_groups();
    let r = AttnOpts::shared_ranges(&[groups], l);
    AttnOpts {
        causal: true,
        kv_ranges: Some(Tensor::from_u32(r, &[1, l, 4], dev).unwrap()),
        ..Default::default()
    }
}

#[test]
fn shared_prompt_attention_is_each_answer_after_its_prompt_alone() {
    let (nh, nkv, hd) = (4, 2, 16);
    let s = common::seed("shared prompt attention");
    let (groups, l) = shared_groups();
    let (q, k, v) = (
        common::randn(&[1, l, nh, hd], s),
        common::randn(&[1, l, nkv, hd], s + 1),
        common::randn(&[1, l, nkv, hd], s + 2),
    );
    let dout = common::randn(&[1, l, nh, hd], s + 3);
    let got = attend(&q, &k, &v, &shared_opts(Device::Cpu), &dout);
    // each answer after its prompt, alone: plain causal attention over a (1, P + n) batch.
    // The prompt's rows are the same for every answer (out and dq: the first answer's);
    // its keys and values serve every answer (dk and dv: summed over them).
    let widths = [nh * hd, nh * hd, nkv * hd, nkv * hd];
    let mut want: [Vec<f64>; 4] = std::array::from_fn(|i| vec![0.0; l * widths[i]]);
    let rows = |x: &Tensor, at: usize, n: usize| x.detach().narrow(1, at, n).unwrap();
    for g in &groups {
        let mut at = g.start + g.prompt;
        let answers = if g.answers.is_empty() {
            vec![0]
        } else {
            g.answers.clone()
        };
        for (i, &n) in answers.iter().enumerate() {
            let cut = |x: &Tensor| {
                Tensor::cat(&[&rows(x, g.start, g.prompt), &rows(x, at, n)], 1).unwrap()
            };
            // the prompt's queries run once in the packed row: only the first answer's
            // pass carries their gradient into the prompt's keys and values
            let g_out = if i == 0 {
                cut(&dout)
            } else {
                let quiet = Tensor::zeros(&[1, g.prompt, nh, hd], Device::Cpu).unwrap();
                Tensor::cat(&[&quiet, &rows(&dout, at, n)], 1).unwrap()
            };
            let vals = attend(&cut(&q), &cut(&k), &cut(&v), &causal(), &g_out);
            for (j, x) in vals.iter().enumerate() {
                let w = widths[j];
                // prompt rows: taken from the first answer, or summed (dk, dv)
                for r in 0..g.prompt {
                    let dst = &mut want[j][(g.start + r) * w..(g.start + r + 1) * w];
                    let src = &x[r * w..(r + 1) * w];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = if j >= 2 {
                            *d + s
                        } else if i == 0 {
                            *s
                        } else {
                            *d
                        };
                    }
                }
                want[j][at * w..(at + n) * w].copy_from_slice(&x[g.prompt * w..]);
            }
            at += n;
        }
    }
    same_as_alone("shared-prompt", &got, &want);
}

#[test]
fn shared_prompt_attention_gpu_matches_cpu() {
    if !common::gpu_ok("shared prompt attention gpu") {
        return;
    }
    let s = common::seed("shared prompt attention gpu");
    let (_, l) = shared_groups();
    for (nh, nkv, hd) in [(4, 2, 16), (7, 1, 64)] {
        let x = [
            common::randn(&[1, l, nh, hd], s),
            common::randn(&[1, l, nkv, hd], s + 1),
            common::randn(&[1, l, nkv, hd], s + 2),
        ];
        common::gpu_vs_cpu(
            &format!("shared-prompt attention {nh}/{nkv}x{hd}"),
            &x,
            true,
            1e-3,
            |x| Tensor::attention(&x[0], &x[1], &x[2], &shared_opts(x[0].device())),
        );
    }
}

/// DPO pairs of ThinkPO's shape in miniature: long chosen, short rejected, prompts of
/// different lengths; one rejected completion of a single token. The first three pairs'
/// answers share their prompt, the fourth repeats the first's prompt (two pairs sampled
/// from one question), and the last's answers have prompts of their own.
fn pairs(vocab: u32) -> Vec<(Seq, Seq)> {
    let mk = |len: usize, prompt_len: usize, ps: u32, s: u32| Seq {
        ids: (0..len as u32)
            .map(|i| {
                let s = if (i as usize) < prompt_len { ps } else { s };
                (i * 37 + s * 101 + 5) % vocab
            })
            .collect(),
        prompt_len,
    };
    vec![
        (mk(61, 7, 1, 1), mk(9, 7, 1, 2)),
        (mk(23, 4, 3, 3), mk(5, 4, 3, 4)),
        (mk(90, 12, 5, 5), mk(13, 12, 5, 6)),
        (mk(30, 7, 1, 7), mk(8, 7, 1, 8)),
        (mk(40, 6, 9, 9), mk(11, 6, 10, 10)),
    ]
}

/// How a batch lies in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Padded,
    Packed,
    /// Packed, answers after a shared prompt computing it once.
    Shared,
}

/// Loss and every trainable gradient of one DPO objective (padded or packed), and one SFT
/// loss over the chosen sequences in the same layout.
fn loss_and_grads(
    dev: Device,
    layout: Layout,
    ckpt: bool,
    lora: Option<f32>,
) -> (Vec<f64>, Vec<(String, Vec<f64>)>) {
    let mut m = Model::load(
        &root().join("qwen2-tied"),
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: lora.is_none(),
        },
    )
    .unwrap();
    if let Some(dropout) = lora {
        let targets: Vec<String> = ["q", "k", "v", "o", "down"].map(String::from).to_vec();
        // with dropout: a mask row is drawn per (seed, layer, token), so a padded and a
        // packed batch of the same sequences drop the same values
        m.net.add_lora(&targets, 4, 8.0, dropout, 3).unwrap();
        // B starts at zero (so A's gradient would be zero): give it values
        common::randomise_lora_b(&mut m.net, dev, 70);
    }
    m.net.padding_free = layout != Layout::Padded;
    m.net.shared_prompt = layout == Layout::Shared;
    m.net.gradient_checkpointing = ckpt;
    let ps = pairs(m.net.cfg.vocab_size as u32);
    let seqs: Vec<&Seq> = ps
        .iter()
        .map(|p| &p.0)
        .chain(ps.iter().map(|p| &p.1))
        .collect();
    let linear = LinearCtx {
        disable_adapters: false,
        dropout_seed: Some(77),
        token_keys: None,
    };
    let lp = loss::sequence_logps(&m.net, &seqs, linear.clone(), true).unwrap();
    let (rc, rr) = (
        vec![-60.0, -20.5, -99.0, -31.0, -44.0],
        vec![-11.0, -4.0, -15.5, -9.5, -12.0],
    );
    let p = DpoParams::sigmoid(0.1);
    let dpo = loss::dpo_objective(&lp, &rc, &rr, &p).unwrap();
    let sft_lp = loss::sequence_logps(&m.net, &seqs[..ps.len()], linear, false).unwrap();
    let sft = loss::sft_loss(&sft_lp, 220).unwrap();
    let total = dpo.add(&sft).unwrap();
    total.backward().unwrap();
    let mut numbers = vec![dpo.to_vec_f64().unwrap()[0], sft.to_vec_f64().unwrap()[0]];
    numbers.extend(lp.sum.to_vec_f64().unwrap());
    numbers.extend(lp.per_token.to_vec_f64().unwrap());
    // each position's sum of logits over the vocabulary (TRL's logits/chosen): a sum of
    // V terms that cancel, so compared relative to the sum of their magnitudes
    let v = m.net.cfg.vocab_size as f64;
    numbers.extend(
        lp.logit_rows
            .as_ref()
            .unwrap()
            .to_vec_f64()
            .unwrap()
            .iter()
            .map(|x| x / v),
    );
    let params = if lora.is_some() {
        m.net.lora_parameters()
    } else {
        m.net.named_parameters()
    };
    let grads = params
        .into_iter()
        .map(|(n, p)| {
            let g = p.grad().unwrap_or_else(|| panic!("no gradient for {n}"));
            (n, g.to_vec_f64().unwrap())
        })
        .collect();
    (numbers, grads)
}

fn compare(
    what: &str,
    (na, ga): &(Vec<f64>, Vec<(String, Vec<f64>)>),
    (nb, gb): &(Vec<f64>, Vec<(String, Vec<f64>)>),
    tol: f64,
) {
    assert_eq!(na.len(), nb.len(), "{what}: different numbers of values");
    common::assert_close(&format!("{what}: losses and log-probs"), nb, na, tol, tol);
    assert_eq!(ga.len(), gb.len());
    assert!(ga.len() > 4, "{what}: too few parameters compared");
    for ((n, a), (_, b)) in ga.iter().zip(gb) {
        assert!(
            a.iter().any(|&x| x != 0.0),
            "{what}: {n} has an all-zero gradient"
        );
        let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
        common::assert_close(&format!("{what}: {n}"), b, a, tol * scale, tol);
    }
}

#[test]
fn packed_dpo_and_sft_give_the_padded_losses_and_gradients_on_the_cpu() {
    // a shared prompt is one set of tokens for all its answers, so one dropout mask:
    // compared to the padded pass without dropout
    for (layout, ckpt, lora) in [
        (Layout::Packed, false, None),
        (Layout::Packed, true, Some(0.25)),
        (Layout::Shared, false, None),
        (Layout::Shared, true, Some(0.0)),
    ] {
        let padded = loss_and_grads(Device::Cpu, Layout::Padded, ckpt, lora);
        let packed = loss_and_grads(Device::Cpu, layout, ckpt, lora);
        compare(
            &format!("cpu {layout:?} vs padded (checkpointing {ckpt}, lora {lora:?})"),
            &padded,
            &packed,
            1e-6,
        );
    }
}

#[test]
fn packed_dpo_and_sft_give_the_padded_losses_and_gradients_on_the_gpu() {
    if !common::gpu_ok("packed dpo gpu") {
        return;
    }
    // a shared prompt is one set of tokens for all its answers, so one dropout mask:
    // compared to the padded pass without dropout
    for (layout, ckpt, lora) in [
        (Layout::Packed, false, None),
        (Layout::Packed, true, Some(0.25)),
        (Layout::Shared, false, None),
        (Layout::Shared, true, Some(0.0)),
    ] {
        let padded = loss_and_grads(Device::Gpu, Layout::Padded, ckpt, lora);
        let packed = loss_and_grads(Device::Gpu, layout, ckpt, lora);
        compare(
            &format!("gpu {layout:?} vs padded (checkpointing {ckpt}, lora {lora:?})"),
            &padded,
            &packed,
            1e-4,
        );
        let cpu = loss_and_grads(Device::Cpu, layout, ckpt, lora);
        compare(
            &format!("{layout:?} gpu vs cpu (checkpointing {ckpt}, lora {lora:?})"),
            &cpu,
            &packed,
            1e-3,
        );
    }
}

/// `ponder dpo` and `ponder sft` as a user runs them: padded, `--padding-free` (SFT's
/// `--packing`), and padding-free micro-batches formed by a token budget, log the same
/// losses step by step (a step holds the same examples however they are split).
#[test]
fn padding_free_and_token_budget_runs_log_the_padded_run() {
    use ponder::train::metrics;
    use ponder::train::trainer::{train, Mode, TrainArgs};
    let dir = common::scratch("packing");
    let run = |mode: Mode, tag: &str, extra: &[&str]| -> Vec<Vec<f64>> {
        let (m, out) = (root().join("qwen2-tied"), dir.join(tag));
        let d = root().join(match mode {
            Mode::Dpo => "train/arith_pairs.jsonl",
            Mode::Sft => "train/sft.jsonl",
        });
        #[rustfmt::skip]
        let mut flags = vec!["--model", m.to_str().unwrap(), "--data", d.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--lr", "5e-3", "--batch-size", "4", "--grad-accum", "2", "--steps", "3", "--device", "cpu", "--quiet",
            "--ref-cache", dir.join(format!("{tag}.logps")).to_str().unwrap().to_string().leak()];
        flags.extend(extra);
        train(mode, &TrainArgs::from_flags(&flags).unwrap()).unwrap();
        let rows = metrics::read(&out.join("metrics.jsonl")).unwrap();
        let keys: &[&str] = match mode {
            Mode::Dpo => &["loss", "grad_norm", "rewards/margins", "logps/chosen"],
            Mode::Sft => &["loss", "grad_norm"],
        };
        keys.iter()
            .map(|k| rows.iter().map(|r| r[*k].as_f64().unwrap()).collect())
            .collect()
    };
    let same = |what: &str, a: &[Vec<f64>], b: &[Vec<f64>]| {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), 3, "{what}: steps logged");
            common::assert_close(what, y, x, 1e-5, 1e-5);
        }
    };
    let padded = run(Mode::Dpo, "dpo-padded", &[]);
    same(
        "dpo --padding-free",
        &padded,
        &run(Mode::Dpo, "dpo-free", &["--padding-free"]),
    );
    // 8 pairs of 20-30 tokens a step, in micro-batches of at most 90 tokens
    same(
        "dpo --padding-free --max-tokens-per-batch 90",
        &padded,
        &run(
            Mode::Dpo,
            "dpo-budget",
            &["--padding-free", "--max-tokens-per-batch", "90"],
        ),
    );
    // each pair's prompt computed once for both answers
    same(
        "dpo --shared-prompt",
        &padded,
        &run(Mode::Dpo, "dpo-shared", &["--shared-prompt"]),
    );
    same(
        "dpo --shared-prompt --max-tokens-per-batch 90",
        &padded,
        &run(
            Mode::Dpo,
            "dpo-shared-budget",
            &["--shared-prompt", "--max-tokens-per-batch", "90"],
        ),
    );
    same(
        "dpo --max-tokens-per-batch 90 (padded)",
        &padded,
        &run(
            Mode::Dpo,
            "dpo-budget-padded",
            &["--max-tokens-per-batch", "90"],
        ),
    );
    same(
        "sft --packing",
        &run(Mode::Sft, "sft-padded", &[]),
        &run(Mode::Sft, "sft-packed", &["--packing"]),
    );
}
