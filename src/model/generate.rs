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
use crate::tensor::{Device, Tensor};
use rayon::prelude::*;

/// Largest KV cache a generation call may allocate.
const MAX_KV_BYTES: usize = 64 << 30;

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
    /// Untempered log-probability of each id under the model that produced it, read off
    /// the same logits it was sampled from: a reference log-prob that costs no extra pass.
    pub logprobs: Vec<f32>,
    /// How many of `ids` a steering hook forced rather than the sampler chose.
    pub forced: usize,
    pub finish: Finish,
}

/// A steering hook: after each token of row `row` it sees that row's whole text so far
/// (prompt included) and may return token ids to force next, in order. Forced ids count
/// towards `max_new_tokens`; the hook is asked again only once they are all emitted.
pub type Steer<'a> = dyn FnMut(usize, &str) -> Option<Vec<u32>> + 'a;

/// `log_softmax(logits)[id]`: f32 exponentials (vectorised), summed in f64.
fn logprob_of(logits: &[f32], id: u32) -> f32 {
    use crate::backend::cpu::vmath;
    let m = vmath::max(logits);
    let z = vmath::exp_weights(logits, m, 1.0, None);
    ((logits[id as usize] - m) as f64 - z.ln()) as f32
}

/// Whether the generated text, whose last `new` bytes just arrived, now contains a stop
/// string: only the tail that could hold a new match is searched.
fn hit_stop(text: &str, new: usize, stops: &[String]) -> bool {
    let longest = stops.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut from = text.len().saturating_sub(new + longest);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let tail = &text[from..];
    stops
        .iter()
        .any(|s| !s.is_empty() && tail.contains(s.as_str()))
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
            "prefill {} tokens in {:.3}s ({:.1} tok/s); decode {} tokens over {} rows in {:.3}s ({:.1} tok/s); {:.1} new tok/s over the whole call",
            self.prefill_tokens,
            self.prefill_s,
            self.prefill_tokens as f64 / self.prefill_s.max(1e-9),
            self.decode_tokens,
            self.rows,
            self.decode_s,
            self.decode_tokens as f64 / self.decode_s.max(1e-9),
            self.decode_tokens as f64 / (self.prefill_s + self.decode_s).max(1e-9)
        )
    }
}

/// Pick the next token from one row of logits (HF order: temperature, top-k, top-p).
///
/// Nothing sorts the vocabulary: plain temperature sampling draws from the weights
/// e^((x - max) / T) in id order; top-k takes its k candidates by partial selection and
/// sorts only those; top-p alone sorts growing slices of the most likely ids until they
/// hold the mass p. Kept candidates are ordered by (logit descending, id ascending) and a
/// token is kept while the mass of the more likely ones is below p, as HF's filters do.
/// One uniform is drawn per call.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut impl Rng) -> u32 {
    use crate::backend::cpu::vmath;
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
    let inv_t = 1.0 / p.temperature;
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let top_k = p.top_k > 0 && p.top_k < logits.len();
    if !top_k && p.top_p >= 1.0 {
        let mut w = vec![0.0f32; logits.len()];
        let total = vmath::exp_weights(logits, vmath::max(logits), inv_t, Some(&mut w));
        return draw(&w, None, total, rng);
    }
    if top_k {
        // keep every token at least as likely as the k-th (ties included, as HF's top-k),
        // sorted, then top-p over their weights
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        idx.select_nth_unstable_by(p.top_k - 1, by_logit);
        let kth = logits[idx[p.top_k - 1] as usize];
        idx.retain(|&i| logits[i as usize] >= kth);
        idx.sort_unstable_by(by_logit);
        let m = logits[idx[0] as usize];
        let w: Vec<f32> = idx
            .iter()
            .map(|&i| vmath::exp((logits[i as usize] - m) * inv_t))
            .collect();
        let keep = nucleus(&w, p.top_p);
        let total: f64 = w[..keep].iter().map(|&x| x as f64).sum();
        return draw(&w[..keep], Some(&idx[..keep]), total, rng);
    }
    // top-p alone: weights of the whole vocabulary, then sorted slices of the largest
    let mut all = vec![0.0f32; logits.len()];
    let total = vmath::exp_weights(logits, vmath::max(logits), inv_t, Some(&mut all));
    let target = p.top_p as f64 * total;
    let mut rest: Vec<u32> = (0..logits.len() as u32).collect();
    let (mut ids, mut ws) = (Vec::new(), Vec::new());
    let (mut cum, mut chunk) = (0.0f64, 64usize);
    'grow: while !rest.is_empty() {
        let take = chunk.min(rest.len());
        if take < rest.len() {
            rest.select_nth_unstable_by(take - 1, by_logit);
        }
        let tail = rest.split_off(take);
        let mut head = std::mem::replace(&mut rest, tail);
        head.sort_unstable_by(by_logit);
        for id in head {
            if cum >= target && !ids.is_empty() {
                break 'grow;
            }
            let x = all[id as usize];
            cum += x as f64;
            ids.push(id);
            ws.push(x);
        }
        chunk *= 4;
    }
    draw(&ws, Some(&ids), cum, rng)
}

/// How many of the (descending) weights `w` top-p keeps: a token stays while the mass
/// before it is below `top_p` of the total, and at least one does.
fn nucleus(w: &[f32], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return w.len();
    }
    let target = top_p as f64 * w.iter().map(|&x| x as f64).sum::<f64>();
    let mut cum = 0.0f64;
    for (k, &x) in w.iter().enumerate() {
        if cum >= target && k > 0 {
            return k;
        }
        cum += x as f64;
    }
    w.len()
}

/// Draw index k with probability w[k] / total (`total` is their sum), returning `ids[k]`
/// or k itself; the last positive weight takes what rounding leaves over.
fn draw(w: &[f32], ids: Option<&[u32]>, total: f64, rng: &mut impl Rng) -> u32 {
    let id = |k: usize| ids.map_or(k as u32, |ids| ids[k]);
    let mut u = rng.random::<f64>() * total;
    let mut last = 0;
    for (k, &x) in w.iter().enumerate() {
        let x = x as f64;
        if x > 0.0 {
            if u < x {
                return id(k);
            }
            last = k;
        }
        u -= x;
    }
    id(last)
}

/// One batched forward with per-row positions and key ranges, returning the last
/// position's logits on the host (an explicit readback), `(rows, V)` row-major.
fn step_logits(
    net: &Transformer,
    ids: &[u32],
    rows: usize,
    t: usize,
    positions: Vec<Vec<usize>>,
    kv_ranges: &Tensor,
    cache: &mut KvCache,
) -> Result<Vec<f32>> {
    let fwd = Forward {
        positions: Some(positions),
        kv_ranges: Some(kv_ranges.clone()),
        cache: Some(cache),
        last_only: true,
        ..Default::default()
    };
    net.forward(ids, rows, t, fwd)?.logits.to_vec_f32()
}

/// Copy each prompt's first `l` cached positions into the `n` decoding rows that continue
/// it: one strided copy per layer and tensor (a stride-0 source dimension repeats a row).
fn fan_out(src: &KvCache, dst: &KvCache, n: usize, l: usize) -> Result<()> {
    for (s, d) in src.k.iter().zip(&dst.k).chain(src.v.iter().zip(&dst.v)) {
        let (p, sc, h, hd) = (s.shape()[0], src.capacity, s.shape()[2], s.shape()[3]);
        let dc = dst.capacity;
        let from = crate::shape::Layout {
            shape: vec![p, n, l, h, hd],
            strides: vec![sc * h * hd, 0, h * hd, hd, 1],
            offset: 0,
        };
        let to = crate::shape::Layout {
            shape: vec![p, n, l, h, hd],
            strides: vec![n * dc * h * hd, dc * h * hd, h * hd, hd, 1],
            offset: 0,
        };
        crate::ops::movement::copy_into(&s.with_layout(from), d, &to)?;
    }
    Ok(())
}

/// Generate `n` continuations of every prompt. Each prompt is prefilled once; its cached
/// keys and values are then fanned out to the `n` rows that sample from it.
/// `on_token(row, id)` sees each token as it is chosen (row = prompt * n + sample).
pub fn generate(
    net: &Transformer,
    prompts: &[Vec<u32>],
    n: usize,
    p: &SamplingParams,
    tok: Option<&Tok>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<(Vec<Sequence>, GenStats)> {
    generate_steered(net, prompts, n, p, tok, on_token, None)
}

/// [`generate`] with a steering hook (see [`Steer`]); calculator decoding is one.
pub fn generate_steered(
    net: &Transformer,
    prompts: &[Vec<u32>],
    n: usize,
    p: &SamplingParams,
    tok: Option<&Tok>,
    on_token: &mut dyn FnMut(usize, u32),
    mut steer: Option<&mut Steer<'_>>,
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
    let need_text = !p.stop_strings.is_empty() || steer.is_some();
    let tk = match (need_text, tok) {
        (true, None) => {
            return Err(Error::invalid(
                "generate",
                "stop strings and steering hooks need the model's tokenizer",
            ))
        }
        (_, t) => t,
    };
    let _ng = crate::autograd::NoGradGuard::new();
    let np = prompts.len();
    let rows = np.checked_mul(n).filter(|&r| r <= 1 << 20).ok_or_else(|| {
        Error::invalid(
            "generate",
            format!("{np} prompts x {n} samples is too many rows (at most 2^20)"),
        )
    })?;
    let l = prompts.iter().map(|q| q.len()).max().unwrap();
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return Err(Error::invalid(
            "generate",
            format!(
                "temperature {} is out of range: a finite number >= 0",
                p.temperature
            ),
        ));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(Error::invalid(
            "generate",
            format!("top_p {} is out of range: 0 < p <= 1", p.top_p),
        ));
    }
    let max_pos = net.cfg.max_position_embeddings;
    let cap = l.saturating_add(p.max_new_tokens);
    if cap > max_pos {
        return Err(Error::invalid(
            "generate",
            format!(
                "a {l}-token prompt plus max_new_tokens {} reaches position {cap}, past the model's max_position_embeddings = {max_pos}",
                p.max_new_tokens
            ),
        ));
    }
    // the KV cache (f32 keys and values of every layer for every row) must fit
    let kv_bytes = [
        rows,
        cap,
        net.cfg.num_hidden_layers,
        2 * net.cfg.kv_dim(),
        4,
    ]
    .iter()
    .try_fold(1usize, |a, &b| a.checked_mul(b));
    // on the CPU, also within what the machine has free (see train::memory::available)
    let limit = match net.device {
        Device::Cpu => {
            crate::train::memory::available().map_or(MAX_KV_BYTES, |a| MAX_KV_BYTES.min(a as usize))
        }
        Device::Gpu => MAX_KV_BYTES,
    };
    match kv_bytes {
        Some(b) if b <= limit => {}
        _ => {
            return Err(Error::invalid(
                "generate",
                format!(
                    "{rows} rows x {cap} positions need a KV cache of {}, over the {} this machine can give; use fewer samples or new tokens",
                    kv_bytes.map_or("more than 2^64 bytes".into(), |b| crate::train::memory::gib(b as u64)),
                    crate::train::memory::gib(limit as u64)
                ),
            ))
        }
    }
    // left padding: prompt i starts at start[i]; its keys are [start[i], ...)
    let start: Vec<usize> = prompts.iter().map(|q| l - q.len()).collect();
    let mut ids = Vec::with_capacity(np * l);
    for q in prompts {
        ids.extend(std::iter::repeat_n(0u32, l - q.len()));
        ids.extend(q);
    }
    let ranges = |per: usize, end: usize| -> Result<Tensor> {
        let r: Vec<u32> = (0..np * per)
            .flat_map(|r| [start[r / per] as u32, end as u32])
            .collect();
        Tensor::from_u32(r, &[np * per, 2], net.device)
    };
    let mut rngs: Vec<_> = (0..rows)
        .map(|r| crate::util::rng(p.seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    let mut seqs: Vec<Sequence> = (0..rows)
        .map(|r| Sequence {
            prompt: r / n,
            sample: r % n,
            ids: vec![],
            logprobs: vec![],
            forced: 0,
            finish: Finish::Length,
        })
        .collect();
    // per row: the text so far (prompt, then what was generated), kept incrementally
    let mut decoders = vec![super::tokenizer::StreamDecoder::new(); rows];
    let mut texts: Vec<String> = Vec::new();
    let mut gen_start = vec![0usize; rows];
    if let (true, Some(t)) = (need_text, tk) {
        let prompt_texts: Vec<String> = prompts
            .iter()
            .map(|q| t.decode(q, false))
            .collect::<Result<_>>()?;
        texts = (0..rows).map(|r| prompt_texts[r / n].clone()).collect();
        gen_start = texts.iter().map(|t| t.len()).collect();
    }
    let mut queued: Vec<std::collections::VecDeque<u32>> = vec![Default::default(); rows];
    let mut done = vec![false; rows];
    let mut stats = GenStats {
        rows,
        prefill_tokens: np * l,
        ..Default::default()
    };
    let v = net.cfg.vocab_size;

    // prefill each distinct prompt once, then fan its cache out to its n rows
    let t0 = Instant::now();
    let mut cache = KvCache::new(&net.cfg, rows, cap, net.device)?;
    let positions: Vec<Vec<usize>> = (0..np)
        .map(|i| (0..l).map(|t| t.saturating_sub(start[i])).collect())
        .collect();
    let prompt_logits = if n == 1 {
        step_logits(net, &ids, np, l, positions, &ranges(1, cap)?, &mut cache)?
    } else {
        let mut pre = KvCache::new(&net.cfg, np, l, net.device)?;
        let lg = step_logits(net, &ids, np, l, positions, &ranges(1, l)?, &mut pre)?;
        fan_out(&pre, &cache, n, l)?;
        cache.len = l;
        lg
    };
    let mut logits: Vec<f32> = (0..rows)
        .flat_map(|r| prompt_logits[(r / n) * v..(r / n + 1) * v].iter().copied())
        .collect();
    stats.prefill_s = t0.elapsed().as_secs_f64();

    // the hook sees each prompt before the first token: a prompt that ends inside
    // something the hook completes (an open calculator annotation) is completed
    if let Some(hook) = steer.as_deref_mut() {
        for (r, q) in queued.iter_mut().enumerate() {
            if let Some(force) = hook(r, &texts[r]) {
                q.extend(force);
            }
        }
    }
    let kv_ranges = ranges(n, cap)?;
    let t1 = Instant::now();
    for step in 0..p.max_new_tokens {
        let mut next = vec![0u32; rows];
        // every live row's token and its log-prob, rows in parallel: a forced id if one
        // is queued (an out-of-vocabulary one is dropped and the row samples instead)
        let picks: Vec<Option<(u32, bool, f32)>> = rngs
            .par_iter_mut()
            .enumerate()
            .map(|(r, rng)| {
                if done[r] {
                    return None;
                }
                let row = &logits[r * v..(r + 1) * v];
                let forced = queued[r].front().copied().filter(|&f| (f as usize) < v);
                let id = forced.unwrap_or_else(|| sample(row, p, rng));
                Some((id, forced.is_some(), logprob_of(row, id)))
            })
            .collect();
        for r in 0..rows {
            let Some((id, forced, lp)) = picks[r] else {
                continue;
            };
            queued[r].pop_front();
            if forced {
                seqs[r].forced += 1;
            }
            next[r] = id;
            seqs[r].ids.push(id);
            seqs[r].logprobs.push(lp);
            stats.decode_tokens += 1;
            on_token(r, id);
            if !p.ignore_eos && p.eos_ids.contains(&id) {
                (done[r], seqs[r].finish) = (true, Finish::Eos);
                continue;
            }
            let Some(t) = tk.filter(|_| need_text) else {
                continue;
            };
            let new = decoders[r].push(t, id)?;
            let added = new.len();
            texts[r].push_str(new);
            if !p.stop_strings.is_empty()
                && hit_stop(&texts[r][gen_start[r]..], added, &p.stop_strings)
            {
                (done[r], seqs[r].finish) = (true, Finish::Stop);
                continue;
            }
            if let (true, Some(hook)) = (queued[r].is_empty(), steer.as_deref_mut()) {
                if let Some(force) = hook(r, &texts[r]) {
                    queued[r].extend(force);
                }
            }
        }
        if done.iter().all(|&d| d) || step + 1 == p.max_new_tokens {
            break;
        }
        let positions: Vec<Vec<usize>> = (0..rows).map(|r| vec![l + step - start[r / n]]).collect();
        logits = step_logits(net, &next, rows, 1, positions, &kv_ranges, &mut cache)?;
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok((seqs, stats))
}
