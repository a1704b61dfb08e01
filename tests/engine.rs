//! The sampling engine: continuous batching gives the same samples, to the bit, whatever
//! the pool size (admissions, rebases and compaction included), records log-probs equal
//! to a reference pass, and runs the same on the GPU.

mod common;
use std::path::Path;

use ponder::model::generate::{generate, GenStats, SamplingParams, Sequence};
use ponder::model::{LoadOpts, Model};
use ponder::Device;

fn load(name: &str, dev: Device) -> Model {
    Model::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/fixtures")
            .join(name),
        LoadOpts {
            device: dev,
            keep_16bit: false,
            trainable: false,
        },
    )
    .unwrap()
}

/// Prompts of uneven lengths (ids spread over the vocabulary, none zero).
fn prompts(v: u32) -> Vec<Vec<u32>> {
    [3usize, 9, 2, 6, 4]
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            (0..l as u32)
                .map(|j| 1 + (j * 37 + i as u32 * 101) % (v - 1))
                .collect()
        })
        .collect()
}

/// Sampling that ends rows at uneven steps: a fifth of the vocabulary counts as EOS.
fn params(v: u32, rows: usize, temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k: 40,
        max_new_tokens: 24,
        seed: 3,
        eos_ids: (0..v).filter(|i| i % 11 == 2).collect(),
        rows,
        ..Default::default()
    }
}

fn run(m: &Model, p: &SamplingParams) -> (Vec<Sequence>, GenStats) {
    let v = m.cfg.vocab_size as u32;
    generate(&m.net, &prompts(v), 3, p, None, &mut |_, _| {}).unwrap()
}

#[test]
fn samples_do_not_depend_on_the_number_of_rows() {
    let m = load("qwen2-tied", Device::Cpu);
    let v = m.cfg.vocab_size as u32;
    let (all, s_all) = run(&m, &params(v, 0, 1.0));
    let lens: Vec<usize> = all.iter().map(|s| s.ids.len()).collect();
    assert!(
        lens.iter().min() < lens.iter().max(),
        "the test needs rows of different lengths: {lens:?}"
    );
    assert_eq!(s_all.rows, 15);
    for rows in [1, 2, 4, 7] {
        let (seqs, stats) = run(&m, &params(v, rows, 1.0));
        assert_eq!(stats.rows, rows);
        for (a, b) in all.iter().zip(&seqs) {
            assert_eq!((a.prompt, a.sample), (b.prompt, b.sample));
            assert_eq!(
                a.ids, b.ids,
                "item {}/{} differs with {rows} rows",
                a.prompt, a.sample
            );
            assert_eq!(a.finish, b.finish);
            // to the bit: a row's products, attention and sampling do not depend on how
            // many rows share its step
            let bits = |s: &Sequence| s.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(a),
                bits(b),
                "item {}/{}: log-probs differ with {rows} rows",
                a.prompt,
                a.sample
            );
        }
        // one or two rows run past the cache's capacity: the live columns were moved
        if rows <= 2 {
            assert!(stats.rebases > 0, "{rows} rows: no rebase was exercised");
        }
        // the pool stays full while the queue lasts
        assert!(
            stats.busy_row_steps * 10 >= stats.row_steps * 9,
            "{stats:?}"
        );
    }
}

/// The log-probs recorded under continuous batching (rows re-used, columns moved) are a
/// reference pass's, within 1e-5.
#[test]
fn recorded_logprobs_equal_a_reference_pass() {
    let m = load("qwen2-tied", Device::Cpu);
    let v = m.cfg.vocab_size as u32;
    let (seqs, stats) = run(
        &m,
        &SamplingParams {
            top_p: 0.9,
            ..params(v, 2, 0.8)
        },
    );
    assert!(stats.rebases > 0);
    let ps = prompts(v);
    let items: Vec<(&[u32], &[u32])> = seqs
        .iter()
        .map(|s| (ps[s.prompt].as_slice(), s.ids.as_slice()))
        .collect();
    let scores = ponder::model::score::score_completions(&m.net, &items, 4).unwrap();
    for (s, c) in seqs.iter().zip(&scores) {
        common::assert_close(
            "recorded vs reference log-probs",
            &s.logprobs.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &c.per_token.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            1e-5,
            0.0,
        );
    }
}

/// On the GPU the engine's copies (admissions, rebases, compaction) run as strided
/// copies in WGSL: greedy decoding there equals the CPU's.
#[test]
fn gpu_engine_matches_cpu() {
    if !common::gpu_ok("gpu engine") {
        return;
    }
    let cpu = load("llama-gqa", Device::Cpu);
    let gpu = load("llama-gqa", Device::Gpu);
    let v = cpu.cfg.vocab_size as u32;
    let (want, _) = run(&cpu, &params(v, 0, 0.0));
    let (got, stats) = run(&gpu, &params(v, 2, 0.0));
    assert!(stats.rebases > 0);
    for (a, b) in want.iter().zip(&got) {
        assert_eq!(a.ids, b.ids, "item {}/{}: GPU differs", a.prompt, a.sample);
        common::assert_close(
            "GPU vs CPU log-probs",
            &b.logprobs.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &a.logprobs.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            1e-3,
            1e-3,
        );
    }
}
