//! Generation: greedy parity with transformers, batching with left padding equal to
//! one-at-a-time decoding, the KV cache against a full forward, seeded sampling, stops.

mod common;
use std::path::{Path, PathBuf};

use ponder::model::generate::{generate, sample, Finish, SamplingParams};
use ponder::model::weights::open_file;
use ponder::model::{Forward, KvCache, LoadOpts, Model};
use ponder::Device;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fixtures")
        .join(name)
}

fn load(name: &str, dev: Device) -> Model {
    Model::load(
        &dir(name),
        LoadOpts {
            device: dev,
            keep_16bit: true,
            trainable: false,
        },
    )
    .unwrap()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

fn devices(test: &str) -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    if common::gpu_ok(test) {
        v.push(Device::Gpu);
    }
    v
}

#[test]
fn greedy_matches_transformers() {
    for dev in devices("greedy parity") {
        for name in ["llama-gqa", "qwen2-tied", "llama3-rope", "qwen2-bf16"] {
            let r = open_file(&dir(name).join("reference.safetensors")).unwrap();
            let prompt = r.load_any("greedy.prompt").unwrap().to_vec_u32().unwrap();
            let want = r.load_any("greedy.ids").unwrap().to_vec_u32().unwrap();
            let m = load(name, dev);
            let (seqs, _) = generate(
                &m.net,
                std::slice::from_ref(&prompt),
                1,
                &greedy(20),
                None,
                &mut |_, _| {},
            )
            .unwrap();
            assert_eq!(
                seqs[0].ids,
                want[prompt.len()..],
                "{name} on {dev}: greedy tokens differ from transformers"
            );
        }
    }
}

#[test]
fn batched_with_padding_equals_one_at_a_time() {
    for dev in devices("batched generation") {
        let m = load("llama-gqa", dev);
        let prompts = vec![
            vec![5u32, 77, 300, 12, 9, 41, 200],
            vec![33u32, 8],
            vec![100u32, 101, 102, 103],
        ];
        let (batched, _) =
            generate(&m.net, &prompts, 2, &greedy(12), None, &mut |_, _| {}).unwrap();
        assert_eq!(batched.len(), 6);
        for (i, p) in prompts.iter().enumerate() {
            let (single, _) = generate(
                &m.net,
                std::slice::from_ref(p),
                1,
                &greedy(12),
                None,
                &mut |_, _| {},
            )
            .unwrap();
            for s in &batched[i * 2..i * 2 + 2] {
                assert_eq!(s.prompt, i);
                assert_eq!(s.ids, single[0].ids, "prompt {i} on {dev}: batched (left-padded) decoding differs from decoding it alone");
            }
        }
    }
}

#[test]
fn kv_cache_matches_full_forward() {
    for dev in devices("kv cache") {
        let m = load("qwen2-tied", dev);
        let ids: Vec<u32> = vec![3, 99, 250, 7, 18, 300, 42, 5, 64];
        let full = ponder::no_grad(|| m.net.forward(&ids, 1, ids.len(), Forward::default()))
            .unwrap()
            .logits
            .to_vec_f64()
            .unwrap();
        let mut cache = KvCache::new(&m.cfg, 1, 16, dev).unwrap();
        let v = m.cfg.vocab_size;
        // prefill 4, then one token at a time
        let mut inc = ponder::no_grad(|| {
            m.net.forward(
                &ids[..4],
                1,
                4,
                Forward {
                    cache: Some(&mut cache),
                    ..Default::default()
                },
            )
        })
        .unwrap()
        .logits
        .to_vec_f64()
        .unwrap();
        for t in 4..ids.len() {
            let o = ponder::no_grad(|| {
                m.net.forward(
                    &ids[t..t + 1],
                    1,
                    1,
                    Forward {
                        cache: Some(&mut cache),
                        ..Default::default()
                    },
                )
            })
            .unwrap();
            inc.extend(o.logits.to_vec_f64().unwrap());
        }
        assert_eq!(inc.len(), ids.len() * v);
        common::assert_close(
            &format!("cached vs full logits on {dev}"),
            &inc,
            &full,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn sampling_is_reproducible_and_seed_dependent() {
    let m = load("qwen2-tied", Device::Cpu);
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        max_new_tokens: 16,
        ignore_eos: true,
        seed: 11,
        ..Default::default()
    };
    let run = |p: &SamplingParams| {
        generate(&m.net, &[vec![1, 2, 3]], 4, p, None, &mut |_, _| {})
            .unwrap()
            .0
            .into_iter()
            .map(|s| s.ids)
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(&p), run(&p));
    assert_eq!(a, b, "same seed, different samples");
    assert!(
        a[0] != a[1] || a[1] != a[2],
        "the n samples of one prompt are all identical"
    );
    let c = run(&SamplingParams {
        seed: 12,
        ..p.clone()
    });
    assert_ne!(a, c, "a different seed gave the same samples");
}

#[test]
fn sampling_filters() {
    let logits = vec![1.0f32, 3.0, 2.0, 3.0, -1.0];
    let mut rng = ponder::util::rng(0);
    // greedy takes the first maximum, as torch.argmax
    assert_eq!(sample(&logits, &greedy(1), &mut rng), 1);
    // top-k 2 keeps the two 3.0s; top-p 0.01 keeps only the most likely token
    for _ in 0..50 {
        let k2 = sample(
            &logits,
            &SamplingParams {
                temperature: 1.0,
                top_k: 2,
                ..Default::default()
            },
            &mut rng,
        );
        assert!(k2 == 1 || k2 == 3, "top-k 2 sampled {k2}");
        let p = sample(
            &logits,
            &SamplingParams {
                temperature: 1.0,
                top_p: 0.01,
                ..Default::default()
            },
            &mut rng,
        );
        assert_eq!(p, 1, "top-p 0.01 must keep a single token");
    }
    // a low temperature concentrates on the maxima; frequencies follow the softmax otherwise
    let mut counts = [0usize; 5];
    for _ in 0..4000 {
        counts[sample(
            &logits,
            &SamplingParams {
                temperature: 1.0,
                ..Default::default()
            },
            &mut rng,
        ) as usize] += 1;
    }
    let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let want = (logits[i] as f64).exp() / z;
        assert!(
            (c as f64 / 4000.0 - want).abs() < 0.03,
            "token {i}: frequency {} vs probability {want}",
            c as f64 / 4000.0
        );
    }
}

#[test]
fn stops_at_eos_and_stop_strings() {
    let m = load("qwen2-tied", Device::Cpu);
    let prompt = vec![287u32, 295, 271];
    let (free, _) = generate(
        &m.net,
        std::slice::from_ref(&prompt),
        1,
        &greedy(8),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    // make the third greedy token an EOS id: generation ends there, EOS included
    let eos = free[0].ids[2];
    let p = SamplingParams {
        eos_ids: vec![eos],
        ignore_eos: false,
        ..greedy(8)
    };
    let (s, _) = generate(
        &m.net,
        std::slice::from_ref(&prompt),
        1,
        &p,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    let first = free[0].ids.iter().position(|&t| t == eos).unwrap();
    assert_eq!(
        s[0].ids,
        free[0].ids[..=first],
        "did not stop at the EOS id"
    );
    assert_eq!(s[0].finish, Finish::Eos);
    // a stop string taken from the free-running text
    let tok = m.tok.as_ref().unwrap();
    let text = tok.decode(&free[0].ids[..2], false).unwrap();
    let p = SamplingParams {
        stop_strings: vec![text.clone()],
        ..greedy(8)
    };
    let (s, _) = generate(
        &m.net,
        std::slice::from_ref(&prompt),
        1,
        &p,
        Some(tok),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(s[0].finish, Finish::Stop);
    assert!(s[0].ids.len() <= 2 && tok.decode(&s[0].ids, false).unwrap().contains(&text));
    // max_new_tokens ends the rest
    assert_eq!(free[0].finish, Finish::Length);
    assert_eq!(free[0].ids.len(), 8);
}

/// The exact distribution `sample` draws from, in f64, written from HF's definitions:
/// logits / T, top-k (ties at the k-th kept), then top-p over the kept tokens sorted by
/// (logit descending, id ascending): a token stays while the mass before it is < p; then
/// min-p: a token stays if its probability is at least min_p times the largest.
fn exact_distribution(logits: &[f32], t: f64, top_k: usize, top_p: f64, min_p: f64) -> Vec<f64> {
    let n = logits.len();
    let mut keep: Vec<usize> = (0..n).collect();
    keep.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if top_k > 0 && top_k < n {
        let kth = logits[keep[top_k - 1]];
        keep.retain(|&i| logits[i] >= kth);
    }
    let m = logits[keep[0]] as f64 / t;
    let w: Vec<f64> = keep
        .iter()
        .map(|&i| (logits[i] as f64 / t - m).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut kept = keep.len();
    if top_p < 1.0 {
        let (mut cum, mut k) = (0.0, 0);
        for &x in &w {
            if cum >= top_p && k > 0 {
                break;
            }
            cum += x / z;
            k += 1;
        }
        kept = k;
    }
    if min_p > 0.0 {
        kept = w[..kept].iter().take_while(|&&x| x >= min_p).count();
    }
    let z2: f64 = w[..kept].iter().sum();
    let mut p = vec![0.0; n];
    for (j, &i) in keep[..kept].iter().enumerate() {
        p[i] = w[j] / z2;
    }
    p
}

/// Pearson's chi-square of `counts` against `p` (cells expecting fewer than 5 draws are
/// pooled); a draw of a token with probability 0 fails at once.
fn chi_square(counts: &[usize], p: &[f64], draws: usize) -> (f64, usize) {
    let (mut x2, mut cells) = (0.0, 0usize);
    let (mut pool_c, mut pool_e) = (0.0, 0.0);
    for (i, (&c, &q)) in counts.iter().zip(p).enumerate() {
        assert!(
            q > 0.0 || c == 0,
            "token {i} has probability 0 but was drawn {c} times"
        );
        let e = q * draws as f64;
        if e >= 5.0 {
            x2 += (c as f64 - e).powi(2) / e;
            cells += 1;
        } else {
            pool_c += c as f64;
            pool_e += e;
        }
    }
    if pool_e > 0.0 {
        x2 += (pool_c - pool_e).powi(2) / pool_e;
        cells += 1;
    }
    (x2, cells.saturating_sub(1))
}

#[test]
fn sampled_frequencies_follow_the_exact_distribution() {
    // a vocabulary of 300 with a spread of logits, some tied
    let mut logits = ponder::util::randn_vec(300, 2.0, 77);
    logits[5] = logits[9];
    let draws = 30_000;
    for (t, top_k, top_p, min_p) in [
        (1.0, 0, 1.0, 0.0),
        (0.7, 0, 1.0, 0.0),
        (1.3, 20, 1.0, 0.0),
        (0.8, 0, 0.9, 0.0),
        (1.0, 40, 0.5, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.7, 30, 0.9, 0.02),
    ] {
        let p = SamplingParams {
            temperature: t as f32,
            top_k,
            top_p: top_p as f32,
            min_p: min_p as f32,
            ..Default::default()
        };
        let want = exact_distribution(&logits, t, top_k, top_p, min_p);
        let mut rng = ponder::util::rng(5);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sample(&logits, &p, &mut rng) as usize] += 1;
        }
        let (x2, dof) = chi_square(&counts, &want, draws);
        // far in the tail: about 7 standard deviations of chi-square(dof) above its mean
        let bound = dof as f64 + 7.0 * (2.0 * dof as f64).sqrt() + 10.0;
        assert!(x2 < bound, "T {t} top-k {top_k} top-p {top_p} min-p {min_p}: chi-square {x2:.1} over {dof} dof (bound {bound:.1})");
    }
    // a flat vocabulary of 5,000 under top-p 0.5: the kept set (about half) is larger than
    // the first slice the sampler sorts, so it must grow it, and nothing outside is drawn
    let flat: Vec<f32> = ponder::util::randn_vec(5000, 0.05, 78);
    let want = exact_distribution(&flat, 1.0, 0, 0.5, 0.0);
    let kept = want.iter().filter(|&&q| q > 0.0).count();
    assert!(kept > 1000, "the test needs a large kept set, got {kept}");
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        ..Default::default()
    };
    let mut rng = ponder::util::rng(6);
    for _ in 0..20_000 {
        let id = sample(&flat, &p, &mut rng) as usize;
        assert!(
            want[id] > 0.0,
            "top-p 0.5 drew token {id}, outside the nucleus"
        );
    }
}

/// The GPU sampler (`shaders/sample.wgsl`) draws the CPU's tokens from the same uniforms,
/// forced ids and greedy included, with the same log-probs; and its draws from one row
/// follow the exact distribution (chi-square), for each filter.
#[test]
fn gpu_sampler_draws_the_cpu_tokens_and_the_exact_distribution() {
    if !common::gpu_ok("gpu sampling") {
        return;
    }
    use ponder::model::sampling::{sample_rows, uniform};
    use ponder::Tensor;
    let v = 300;
    let rules = [
        (0.0, 0, 1.0, 0.0),
        (1.0, 0, 1.0, 0.0),
        (0.7, 20, 1.0, 0.0),
        (0.8, 0, 0.9, 0.0),
        (1.0, 0, 1.0, 0.05),
        (1.3, 50, 0.8, 0.01),
    ];
    let params = |(t, k, tp, mp): (f64, usize, f64, f64)| SamplingParams {
        temperature: t as f32,
        top_k: k,
        top_p: tp as f32,
        min_p: mp as f32,
        ..Default::default()
    };
    // 64 different rows, each with a tie
    let rows = 64;
    let mut logits = Vec::new();
    for r in 0..rows {
        let mut row = ponder::util::randn_vec(v, 2.0, 100 + r as u64);
        row[5] = row[9];
        logits.extend(row);
    }
    let forced: Vec<u32> = (0..rows)
        .map(|r| {
            if r % 7 == 3 {
                (r * 13 % v) as u32
            } else {
                u32::MAX
            }
        })
        .collect();
    let u: Vec<f64> = (0..rows)
        .map(|r| uniform(9, r as u64, 0) as f32 as f64)
        .collect();
    let x_cpu = Tensor::from_vec(logits.clone(), &[rows, v], Device::Cpu).unwrap();
    let x_gpu = Tensor::from_vec(logits, &[rows, v], Device::Gpu).unwrap();
    for rule in rules {
        let p = params(rule);
        let cpu = sample_rows(&x_cpu, &p, &u, &forced).unwrap();
        let gpu = sample_rows(&x_gpu, &p, &u, &forced).unwrap();
        for (r, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            assert_eq!(c.0, g.0, "{rule:?} row {r}: CPU drew {}, GPU {}", c.0, g.0);
            assert!(
                (c.1 - g.1).abs() < 1e-4,
                "{rule:?} row {r}: log-prob {} vs {}",
                c.1,
                g.1
            );
        }
    }
    // many draws from one row with a tie
    let mut one = ponder::util::randn_vec(v, 2.0, 77);
    one[5] = one[9];
    let draws = 6000;
    let x = Tensor::from_vec(
        one.iter().copied().cycle().take(draws * v).collect(),
        &[draws, v],
        Device::Gpu,
    )
    .unwrap();
    let u: Vec<f64> = (0..draws as u64).map(|r| uniform(11, r, 0)).collect();
    for rule in &rules[1..] {
        let (t, k, tp, mp) = *rule;
        let got = sample_rows(&x, &params(*rule), &u, &vec![u32::MAX; draws]).unwrap();
        let mut counts = vec![0usize; v];
        for (id, _) in got {
            counts[id as usize] += 1;
        }
        let want = exact_distribution(&one, t, k, tp, mp);
        let (x2, dof) = chi_square(&counts, &want, draws);
        let bound = dof as f64 + 7.0 * (2.0 * dof as f64).sqrt() + 10.0;
        assert!(
            x2 < bound,
            "GPU {rule:?}: chi-square {x2:.1} over {dof} dof (bound {bound:.1})"
        );
    }
}
