//! DPO with Qwen2's 151,936-token vocabulary and 300-token completions, on the GPU
//! against the CPU, under the adapter's own binding limit. On lavapipe (128 MiB per
//! binding) the tied embedding, 151,936 x 256 f32 = 148 MiB, is over it, and so are its
//! gradient and AdamW moments: the embedding, the LM head matmul, the gradient sums and
//! the optimizer all run split (see `backend/gpu/split.rs`). Two optimizer steps, so the
//! second loss also checks the update of the split tensors.

mod common;
use common::*;
use ponder::model::{Config, Transformer};
use ponder::train::data::{Pair, Seq};
use ponder::train::loss::DpoParams;
use ponder::train::optim::{Schedule, Scheduler};
use ponder::train::step::{reference_sums, MicroBatch, Trainer};
use ponder::{DType, Device};

const V: usize = 151_936;
const C: usize = 256;

/// (loss, gradient norm before clipping) of two optimizer steps.
fn losses(device: Device, pair: &Pair) -> Vec<(f64, f64)> {
    let cfg = Config::from_json(
        std::path::Path::new("<big-vocab test>"),
        serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": C, "intermediate_size": 384,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": true, "max_position_embeddings": 1024
        }),
    )
    .unwrap();
    let net =
        Transformer::into_trainable(Transformer::random(&cfg, device, DType::F32, 11).unwrap())
            .unwrap();
    // the reference is another random net, so that the first loss is not ln 2 on both
    // devices by construction but follows both models' log-probs
    let other = Transformer::random(&cfg, device, DType::F32, 12).unwrap();
    let reference = reference_sums(&other, &[pair], false).unwrap();
    drop(other);
    let schedule = Schedule {
        kind: Scheduler::Constant,
        lr: 2e-5,
        warmup_steps: 0,
        total_steps: 2,
        min_lr: 2e-5,
    };
    let p = DpoParams::sigmoid(0.1);
    let mut trainer = Trainer::new(net, false, schedule, 0.01, 1.0, p, 0).unwrap();
    (0..2)
        .map(|_| {
            let batch = MicroBatch::Dpo {
                pairs: vec![pair],
                reference: Some(reference.clone()),
            };
            let st = trainer.step(&[batch]).unwrap();
            let d = st.dpo.as_ref().expect("dpo stats");
            eprintln!(
                "[big vocab] {device:?}: loss {:.6}, grad norm {:.4}, chosen logp {:.3}",
                st.loss,
                st.grad_norm,
                d.logps_chosen.iter().sum::<f64>()
            );
            (st.loss, st.grad_norm)
        })
        .collect()
}

#[test]
fn dpo_with_a_151936_token_vocabulary_matches_the_cpu() {
    if !gpu_ok("big vocab dpo") {
        return;
    }
    let limit = ponder::backend::gpu::context().unwrap().binding_limit();
    let table = (V * C * 4) as u64;
    eprintln!(
        "[big vocab] embedding {} MiB, binding limit {} MiB: {}",
        table >> 20,
        limit >> 20,
        if table > limit {
            "split"
        } else {
            "fits one binding (nothing to split here)"
        }
    );
    // token ids spread over the whole vocabulary, the last blocks included
    let seq = |salt: u32| Seq {
        ids: (0..316u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ salt) % V as u32)
            .collect(),
        prompt_len: 16,
    };
    let pair = Pair {
        chosen: seq(1),
        rejected: seq(0x5bd1_e995),
    };
    let cpu = losses(Device::Cpu, &pair);
    let gpu = losses(Device::Gpu, &pair);
    assert!(
        cpu[0].0 != cpu[1].0,
        "the second step must see updated weights"
    );
    assert!(
        (cpu[0].0 - std::f64::consts::LN_2).abs() > 1e-3,
        "the first loss must depend on the logits: {}",
        cpu[0].0
    );
    let pick = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).collect::<Vec<_>>();
    assert_close(
        "dpo losses, gpu vs cpu",
        &pick(&gpu, |x| x.0),
        &pick(&cpu, |x| x.0),
        1e-3,
        0.0,
    );
    // the norm sums every gradient, the split embedding's included
    assert_close(
        "grad norms, gpu vs cpu",
        &pick(&gpu, |x| x.1),
        &pick(&cpu, |x| x.1),
        0.0,
        1e-4,
    );
}
