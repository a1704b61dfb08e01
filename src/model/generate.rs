//! Generation: N continuations for each of several prompts in one batch, a KV cache on
//! the device, and sampling on the host (greedy, temperature, top-k, top-p; reproducible
//! for a seed). Prompts of different lengths are left-padded; each row's key range skips
//! its padding and its rotary positions start at 0 at its first real token, as
//! transformers does with an attention mask.

use std::time::Instant;

use rand::Rng;
use serde::Serialize;

use super::tokenizer::Tok;
use super::transformer::{Forward, KvCache, Transformer};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: off).
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Do not stop at EOS ids.
    pub ignore_eos: bool,
    pub eos_ids: Vec<u32>,
    /// Stop once the decoded continuation contains one of these.
    pub stop_strings: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 64,
            seed: 0,
            ignore_eos: false,
            eos_ids: vec![],
            stop_strings: vec![],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Eos,
    Stop,
    Length,
}

#[derive(Clone, Debug)]
pub struct Sequence {
    pub prompt: usize,
    pub sample: usize,
    /// Generated ids only (an EOS that ended the sequence included).
    pub ids: Vec<u32>,
    pub finish: Finish,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct GenStats {
    pub rows: usize,
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
}

impl GenStats {
    pub fn summary(&self) -> String {
        format!(
            "prefill {} tokens in {:.3}s ({:.1} tok/s); decode {} tokens over {} rows in {:.3}s ({:.1} tok/s)",
            self.prefill_tokens,
            self.prefill_s,
            self.prefill_tokens as f64 / self.prefill_s.max(1e-9),
            self.decode_tokens,
            self.rows,
            self.decode_s,
            self.decode_tokens as f64 / self.decode_s.max(1e-9)
        )
    }
}

/// Pick the next token from one row of logits (HF order: temperature, top-k, top-p).
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut impl Rng) -> u32 {
    if p.temperature <= 0.0 {
        // first maximum, as torch.argmax
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if p.top_k > 0 && p.top_k < idx.len() {
        idx.select_nth_unstable_by(p.top_k - 1, by_logit);
        idx.truncate(p.top_k);
    }
    idx.sort_unstable_by(by_logit);
    let t = p.temperature as f64;
    let m = logits[idx[0] as usize] as f64 / t;
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (logits[i as usize] as f64 / t - m).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= z);
    if p.top_p < 1.0 {
        // keep a token while the mass of the more likely ones is below top_p
        let mut cum = 0.0;
        let mut keep = 0;
        for &q in &probs {
            if cum >= p.top_p as f64 && keep > 0 {
                break;
            }
            cum += q;
            keep += 1;
        }
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (k, &q) in probs.iter().enumerate() {
        if u < q {
            return idx[k];
        }
        u -= q;
    }
    idx[probs.len() - 1]
}

/// Generate `n` continuations of every prompt. `on_token(row, id)` sees each token as it
/// is chosen (row = prompt * n + sample).
pub fn generate(
    net: &Transformer,
    prompts: &[Vec<u32>],
    n: usize,
    p: &SamplingParams,
    tok: Option<&Tok>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<(Vec<Sequence>, GenStats)> {
    if prompts.is_empty() || n == 0 {
        return Err(Error::invalid(
            "generate",
            "needs at least one prompt and n >= 1",
        ));
    }
    if let Some(i) = prompts.iter().position(|q| q.is_empty()) {
        return Err(Error::invalid("generate", format!("prompt {i} is empty")));
    }
    if !p.stop_strings.is_empty() && tok.is_none() {
        return Err(Error::invalid(
            "generate",
            "stop strings need the model's tokenizer",
        ));
    }
    let _ng = crate::autograd::NoGradGuard::new();
    let rows = prompts.len() * n;
    let l = prompts.iter().map(|q| q.len()).max().unwrap();
    let cap = l + p.max_new_tokens;
    if cap > net.cfg.max_position_embeddings {
        eprintln!(
            "warning: generating up to position {cap}, past max_position_embeddings = {}",
            net.cfg.max_position_embeddings
        );
    }
    let start: Vec<usize> = (0..rows).map(|r| l - prompts[r / n].len()).collect();
    let mut ids = Vec::with_capacity(rows * l);
    for r in 0..rows {
        ids.extend(std::iter::repeat_n(0u32, start[r]));
        ids.extend(&prompts[r / n]);
    }
    let ranges: Vec<u32> = start.iter().flat_map(|&s| [s as u32, cap as u32]).collect();
    let kv_ranges = Tensor::from_u32(ranges, &[rows, 2], net.device)?;
    let mut cache = KvCache::new(&net.cfg, rows, cap, net.device)?;
    let mut rngs: Vec<_> = (0..rows)
        .map(|r| crate::util::rng(p.seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    let mut seqs: Vec<Sequence> = (0..rows)
        .map(|r| Sequence {
            prompt: r / n,
            sample: r % n,
            ids: vec![],
            finish: Finish::Length,
        })
        .collect();
    let mut done = vec![false; rows];
    let mut stats = GenStats {
        rows,
        prefill_tokens: rows * l,
        ..Default::default()
    };
    let v = net.cfg.vocab_size;

    let t0 = Instant::now();
    let positions: Vec<Vec<usize>> = (0..rows)
        .map(|r| (0..l).map(|t| t.saturating_sub(start[r])).collect())
        .collect();
    let out = net.forward(
        &ids,
        rows,
        l,
        Forward {
            positions: Some(positions),
            kv_ranges: Some(kv_ranges.clone()),
            cache: Some(&mut cache),
            last_only: true,
            ..Default::default()
        },
    )?;
    let mut logits = out.logits.to_vec_f32()?; // explicit readback: (rows, 1, V)
    stats.prefill_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    for step in 0..p.max_new_tokens {
        let mut next = vec![0u32; rows];
        for r in 0..rows {
            if done[r] {
                continue;
            }
            let id = sample(&logits[r * v..(r + 1) * v], p, &mut rngs[r]);
            next[r] = id;
            seqs[r].ids.push(id);
            stats.decode_tokens += 1;
            on_token(r, id);
            if !p.ignore_eos && p.eos_ids.contains(&id) {
                (done[r], seqs[r].finish) = (true, Finish::Eos);
            } else if let (false, Some(tk)) = (p.stop_strings.is_empty(), tok) {
                let text = tk.decode(&seqs[r].ids, false)?;
                if p.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                    (done[r], seqs[r].finish) = (true, Finish::Stop);
                }
            }
        }
        if done.iter().all(|&d| d) || step + 1 == p.max_new_tokens {
            break;
        }
        let positions: Vec<Vec<usize>> = (0..rows).map(|r| vec![l + step - start[r]]).collect();
        let out = net.forward(
            &next,
            rows,
            1,
            Forward {
                positions: Some(positions),
                kv_ranges: Some(kv_ranges.clone()),
                cache: Some(&mut cache),
                last_only: true,
                ..Default::default()
            },
        )?;
        logits = out.logits.to_vec_f32()?;
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok((seqs, stats))
}
