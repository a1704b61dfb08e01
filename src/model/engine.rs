//! The sampling engine: continuous batching of (prompt, sample) items over a pool of R
//! decode rows.
//!
//! - Items are numbered `prompt * n + sample` and enter the pool in that order. When a
//!   row ends (EOS, a stop string, or `max_new_tokens`), its slot takes the next item at
//!   once, so the pool stays full until the queue runs dry.
//! - Prompts are prefilled in chunks of up to [`PREFILL_TOKENS`] tokens, in order, once
//!   each, packed end to end in one row (no padding); a chunk's keys and values stay on the device until every sample of its
//!   prompts has been admitted, and admitting an item copies its prompt's cached
//!   positions into the slot (the n samples of a prompt share one prefill).
//! - The KV cache is one slot per row, `(R, capacity)`. Every row writes the same column
//!   `c` each step and reads its own key range `[start, c]`; an admitted prompt is placed
//!   to end at column `c`, over whatever its slot held before. Rotary positions are per
//!   row (`column - start`). When `c` reaches the capacity, the live columns are moved
//!   back to the front in one strided copy per layer tensor ("rebase"); when the queue is
//!   empty and rows have finished, live rows above the live count move into the empty
//!   slots below, so the batch shrinks to the rows still working ("compaction").
//! - The samples of one prompt hold its positions alike, each in its own slot. Every
//!   step names, for each row, the first live row of its prompt and the prompt's columns
//!   there ([`Forward::kv_shared`]); the CPU's decoding attention then reads those
//!   positions from that one slot for all the prompt's rows, block by block for all of
//!   them at once (each block from memory once), with the same results. The GPU reads
//!   each row's own copy.
//! - Slot per row was chosen over a paged cache: the pool's rows all advance together, so
//!   one shared write column and contiguous per-row key ranges reuse the attention kernels
//!   unchanged (CPU and WGSL, forward only), and what the design costs, the moves, was
//!   measured at 0.70 s of 78 s of decoding (2 rebases, 17 compactions) on `eval
//!   --samples 4` over 48 questions with 96 rows. A paged cache pays off when rows differ
//!   wildly in length and memory is tight; here each slot holds at most one prompt plus
//!   `max_new_tokens`, and the pool's memory is known before the first step.
//! - Randomness is `uniform(seed, item, step)` ([`super::sampling::uniform`]): results do
//!   not depend on R or on which slot an item landed in. On the CPU they hold to the bit:
//!   a row's matrix products sum each element the same way whatever the number of rows
//!   beside it (1 to 384, see `backend::cpu::skinny`), and attention and sampling work
//!   row by row.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

use super::sampling::{self, SamplingParams};
use super::tokenizer::{StreamDecoder, Tok};
use super::transformer::{Forward, KvCache, Transformer};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::attention::AttnOpts;
use crate::ops::movement::{copy_into, empty};
use crate::tensor::Tensor;

/// Prompt tokens prefilled together (one forward, packed end to end).
pub const PREFILL_TOKENS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
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

#[derive(Clone, Copy, Debug, Default)]
pub struct GenStats {
    /// Rows in the pool.
    pub rows: usize,
    /// Prompt tokens prefilled, padding included.
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    pub decode_tokens: usize,
    /// Wall time after the prefills (decode steps, admissions, sampling).
    pub decode_s: f64,
    /// Decode steps (forwards of one token per row).
    pub steps: usize,
    /// Rows computed, summed over steps, and those of them that held a live item.
    pub row_steps: usize,
    pub busy_row_steps: usize,
    /// Decode wall time outside the forwards and the sampling (admissions, text, hooks).
    pub host_s: f64,
    /// Logits read back from the device over all steps.
    pub readback_bytes: usize,
    /// Times the live cache columns were moved back to the front.
    pub rebases: usize,
    /// Times the live rows were gathered to the front (the queue empty).
    pub compactions: usize,
    /// Wall time of those moves of the KV cache.
    pub move_s: f64,
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

    /// Rows busy, prefill share, host time and bytes read back per step.
    pub fn engine_summary(&self) -> String {
        let steps = self.steps.max(1) as f64;
        format!(
            "{} steps, rows busy {:.1}% (of the batch computed) / {:.1}% (of {} rows), prefill {:.1}% of the time, host {:.2} ms per step, {:.2} MB read back per step, {} rebases and {} compactions of the KV cache in {:.2} s",
            self.steps,
            100.0 * self.busy_row_steps as f64 / self.row_steps.max(1) as f64,
            100.0 * self.busy_row_steps as f64 / (steps * self.rows.max(1) as f64),
            self.rows,
            100.0 * self.prefill_s / (self.prefill_s + self.decode_s).max(1e-9),
            1e3 * self.host_s / steps,
            self.readback_bytes as f64 / steps / 1e6,
            self.rebases,
            self.compactions,
            self.move_s
        )
    }
}

/// What the engine calls back while it works.
pub struct Hooks<'a, 'b> {
    /// Each token as it is chosen: `(item, id)`.
    pub on_token: &'a mut dyn FnMut(usize, u32),
    /// Each item once it has ended.
    pub on_finish: Option<&'a mut dyn FnMut(&Sequence)>,
    /// A steering hook (see [`Steer`]); it is called with the item's number.
    pub steer: Option<&'a mut Steer<'b>>,
}

/// A chunk of consecutive prompts prefilled together.
struct Chunk {
    first: usize,
    count: usize,
    /// The prompts lie end to end in the cache's one row: prompt `first + j` holds
    /// columns `[cu[j], cu[j + 1])`.
    cu: Vec<usize>,
    cache: KvCache,
    /// Last-position logits, `(count, V)`.
    logits: Vec<f32>,
    /// Samples of its prompts not yet admitted.
    pending: usize,
}

/// A slot's item while it decodes.
struct Row {
    seq: Sequence,
    item: usize,
    /// First cache column of its prompt.
    start: usize,
    /// The token to feed at the next step.
    next: u32,
    queued: VecDeque<u32>,
    decoder: StreamDecoder,
    text: String,
    gen_start: usize,
}

/// Where tokens go once chosen: the user's callbacks and the stop rules.
struct Sink<'p, 'a, 'b> {
    p: &'p SamplingParams,
    tok: Option<&'p Tok>,
    need_text: bool,
    hooks: &'p mut Hooks<'a, 'b>,
}

impl Sink<'_, '_, '_> {
    /// Record `id` for `row`; returns whether the row has ended.
    fn emit(&mut self, row: &mut Row, id: u32, forced: bool, lp: f32) -> Result<bool> {
        let p = self.p;
        row.queued.pop_front();
        if forced {
            row.seq.forced += 1;
        }
        row.seq.ids.push(id);
        row.seq.logprobs.push(lp);
        row.next = id;
        (self.hooks.on_token)(row.item, id);
        if !p.ignore_eos && p.eos_ids.contains(&id) {
            row.seq.finish = Finish::Eos;
            return Ok(true);
        }
        if let (true, Some(t)) = (self.need_text, self.tok) {
            let new = row.decoder.push(t, id)?;
            let added = new.len();
            row.text.push_str(new);
            if !p.stop_strings.is_empty()
                && hit_stop(&row.text[row.gen_start..], added, &p.stop_strings)
            {
                row.seq.finish = Finish::Stop;
                return Ok(true);
            }
        }
        if row.seq.ids.len() >= p.max_new_tokens {
            row.seq.finish = Finish::Length;
            return Ok(true);
        }
        if let (true, Some(hook)) = (row.queued.is_empty(), self.hooks.steer.as_deref_mut()) {
            if let Some(force) = hook(row.item, &row.text) {
                row.queued.extend(force);
            }
        }
        Ok(false)
    }

    fn finish(&mut self, row: Row, out: &mut [Option<Sequence>]) {
        if let Some(f) = self.hooks.on_finish.as_deref_mut() {
            f(&row.seq);
        }
        out[row.item] = Some(row.seq);
    }
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

/// Consecutive prompt ranges `[first, first + count)` of at most [`PREFILL_TOKENS`]
/// tokens each (one prompt at least).
fn plan_chunks(prompts: &[Vec<u32>]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut first, mut tokens) = (0, 0);
    for (i, q) in prompts.iter().enumerate() {
        if i > first && tokens + q.len() > PREFILL_TOKENS {
            out.push((first, i - first));
            (first, tokens) = (i, 0);
        }
        tokens += q.len();
    }
    out.push((first, prompts.len() - first));
    out
}

/// Prefill prompts `[first, first + count)` into a cache of their own: packed end to end
/// in one row (no padding), each seeing only its own keys, with rotary positions that
/// restart at each prompt; only each prompt's last position goes through the LM head.
fn prefill(
    net: &Transformer,
    prompts: &[Vec<u32>],
    (first, count): (usize, usize),
    n: usize,
) -> Result<Chunk> {
    let qs = &prompts[first..first + count];
    let mut cu = Vec::with_capacity(count + 1);
    cu.push(0);
    for q in qs {
        cu.push(cu[cu.len() - 1] + q.len());
    }
    let t = cu[count];
    let ids = qs.concat();
    let positions = vec![qs.iter().flat_map(|q| 0..q.len()).collect()];
    let ranges = AttnOpts::packed_ranges(std::slice::from_ref(&cu), t);
    let mut cache = KvCache::new(&net.cfg, 1, t, net.device)?;
    let fwd = Forward {
        positions: Some(positions),
        kv_ranges: Some(Tensor::from_u32(ranges, &[1, t, 2], net.device)?),
        cache: Some(&mut cache),
        logit_rows: Some(cu[1..].iter().map(|&e| e as u32 - 1).collect()),
        ..Default::default()
    };
    let logits = net.forward(&ids, 1, t, fwd)?.logits.to_vec_f32()?;
    Ok(Chunk {
        first,
        count,
        cu,
        cache,
        logits,
        pending: count * n,
    })
}

/// The last position's logits of every prompt, `(prompts, V)` row-major: the prefill
/// alone, in the engine's chunks (one batched forward per chunk; a judge that reads the
/// next-token distribution after many prompts uses it).
pub fn last_logits(net: &Transformer, prompts: &[Vec<u32>]) -> Result<Vec<f32>> {
    let _ng = crate::autograd::NoGradGuard::new();
    if let Some(i) = prompts.iter().position(|q| q.is_empty()) {
        return Err(crate::error::Error::invalid(
            "forward",
            format!("prompt {i} is empty"),
        ));
    }
    let mut out = Vec::with_capacity(prompts.len() * net.cfg.vocab_size);
    if prompts.is_empty() {
        return Ok(out);
    }
    for chunk in plan_chunks(prompts) {
        out.extend(prefill(net, prompts, chunk, 1)?.logits);
    }
    Ok(out)
}

/// Copy columns `[s0, s0 + w)` of slot `from` to the same columns of slot `to`, for every
/// layer's keys and values (through a temporary: both are rows of one tensor).
fn move_row(cache: &KvCache, from: usize, to: usize, s0: usize, w: usize) -> Result<()> {
    for t in cache.k.iter().chain(&cache.v) {
        let (h, hd) = (t.shape()[2], t.shape()[3]);
        let tmp = empty(&[1, w, h, hd], DType::F32, t.device())?;
        copy_into(&t.narrow(0, from, 1)?.narrow(1, s0, w)?, &tmp, tmp.layout())?;
        copy_into(&tmp, t, &t.layout().narrow(0, to, 1)?.narrow(1, s0, w)?)?;
    }
    Ok(())
}

/// Move columns `[s0, s0 + w)` of slots `0..n` to columns `[d0, d0 + w)`, for every
/// layer's keys and values (through a temporary: the ranges may overlap).
fn rebase(cache: &KvCache, n: usize, s0: usize, d0: usize, w: usize) -> Result<()> {
    for t in cache.k.iter().chain(&cache.v) {
        let (h, hd) = (t.shape()[2], t.shape()[3]);
        let tmp = empty(&[n, w, h, hd], DType::F32, t.device())?;
        copy_into(&t.narrow(0, 0, n)?.narrow(1, s0, w)?, &tmp, tmp.layout())?;
        copy_into(&tmp, t, &t.layout().narrow(0, 0, n)?.narrow(1, d0, w)?)?;
    }
    Ok(())
}

/// Run every item `prompt * n + sample` to its end with at most `rows` rows decoding at
/// once (0: one row per item). Returns the items' sequences in item order.
#[allow(clippy::too_many_arguments)]
pub fn run(
    net: &Transformer,
    prompts: &[Vec<u32>],
    n: usize,
    p: &SamplingParams,
    tok: Option<&Tok>,
    rows: usize,
    need_text: bool,
    hooks: &mut Hooks<'_, '_>,
) -> Result<(Vec<Sequence>, GenStats)> {
    let items = prompts.len() * n;
    let r = if rows == 0 { items } else { rows.min(items) };
    let lmax = prompts.iter().map(|q| q.len()).max().unwrap_or(0);
    let v = net.cfg.vocab_size;
    let mut stats = GenStats {
        rows: r,
        ..Default::default()
    };
    let mut out: Vec<Option<Sequence>> = vec![None; items];
    if p.max_new_tokens == 0 {
        for (i, o) in out.iter_mut().enumerate() {
            *o = Some(new_seq(i, n));
        }
        return Ok((out.into_iter().map(Option::unwrap).collect(), stats));
    }
    // a row's live columns never exceed lmax + max_new - 1; the slack sets how often the
    // columns are moved back to the front
    let live_max = lmax + p.max_new_tokens;
    let cap = live_max + (live_max / 4).max(32);
    let cache = KvCache::new(&net.cfg, r, cap, net.device)?;
    let plan = plan_chunks(prompts);
    let mut next_chunk = 0;
    let mut chunks: VecDeque<Chunk> = VecDeque::new();
    let prompt_texts: Vec<String> = match (need_text, tok) {
        (true, Some(t)) => prompts
            .iter()
            .map(|q| t.decode(q, false))
            .collect::<Result<_>>()?,
        _ => vec![String::new(); prompts.len()],
    };
    let mut sink = Sink {
        p,
        tok,
        need_text,
        hooks,
    };
    let mut slots: Vec<Option<Row>> = (0..r).map(|_| None).collect();
    let mut queue = 0usize;
    let mut c = lmax;
    let t_start = Instant::now();
    let mut forward_s = 0.0;
    loop {
        // admit the next items into free slots
        for (s, slot) in slots.iter_mut().enumerate() {
            while slot.is_none() && queue < items {
                let item = queue;
                queue += 1;
                let pi = item / n;
                while chunks.back().is_none_or(|ch| ch.first + ch.count <= pi) {
                    let t0 = Instant::now();
                    let ch = prefill(net, prompts, plan[next_chunk], n)?;
                    next_chunk += 1;
                    stats.prefill_tokens += ch.cu[ch.count];
                    stats.prefill_s += t0.elapsed().as_secs_f64();
                    chunks.push_back(ch);
                }
                let ch = chunks
                    .iter_mut()
                    .find(|ch| (ch.first..ch.first + ch.count).contains(&pi))
                    .expect("items are admitted in prompt order");
                let (j, lp) = (pi - ch.first, prompts[pi].len());
                let at = ch.cu[j];
                for (src, dst) in ch
                    .cache
                    .k
                    .iter()
                    .zip(&cache.k)
                    .chain(ch.cache.v.iter().zip(&cache.v))
                {
                    let from = src.narrow(0, 0, 1)?.narrow(1, at, lp)?;
                    let to = dst.layout().narrow(0, s, 1)?.narrow(1, c - lp, lp)?;
                    copy_into(&from, dst, &to)?;
                }
                let logits = ch.logits[j * v..(j + 1) * v].to_vec();
                ch.pending -= 1;
                while chunks.front().is_some_and(|ch| ch.pending == 0) {
                    chunks.pop_front();
                }
                let mut row = Row {
                    seq: new_seq(item, n),
                    item,
                    start: c - lp,
                    next: 0,
                    queued: VecDeque::new(),
                    decoder: StreamDecoder::new(),
                    text: prompt_texts[pi].clone(),
                    gen_start: prompt_texts[pi].len(),
                };
                // the hook sees the prompt before the first token: a prompt that ends
                // inside something the hook completes (an open calculator annotation) is
                // completed
                if let Some(hook) = sink.hooks.steer.as_deref_mut() {
                    if let Some(force) = hook(item, &row.text) {
                        row.queued.extend(force);
                    }
                }
                let (f, u) = row.next_draw(p, v);
                let (id, lp) = sampling::pick(&logits, p, u, f);
                if sink.emit(&mut row, id, f != u32::MAX, lp)? {
                    sink.finish(row, &mut out);
                } else {
                    *slot = Some(row);
                }
            }
        }
        let live: Vec<usize> = (0..r).filter(|&s| slots[s].is_some()).collect();
        let Some(&last) = live.last() else { break };
        let mut w = last + 1;
        // the queue is dry and rows have ended: move the live rows past the first
        // `live` slots into the empty ones below, so the batch shrinks to the live rows.
        // At once, for a single hole: moving a row costs about as much as one step spends
        // on it (its cached positions, once), and a hole left in place costs a row's share
        // of every later step
        if queue == items && w > live.len() {
            let n = live.len();
            let holes: Vec<usize> = (0..n).filter(|&s| slots[s].is_none()).collect();
            let movers: Vec<usize> = live.iter().copied().filter(|&s| s >= n).collect();
            let t0 = Instant::now();
            for (to, from) in holes.into_iter().zip(movers) {
                let row = slots[from].take().unwrap();
                move_row(&cache, from, to, row.start, c - row.start)?;
                slots[to] = Some(row);
            }
            stats.move_s += t0.elapsed().as_secs_f64();
            stats.compactions += 1;
            w = n;
        }
        // the write column reached the capacity: move the live columns to the front
        if c + 1 > cap {
            let s0 = (0..w)
                .filter_map(|s| slots[s].as_ref().map(|x| x.start))
                .min()
                .unwrap();
            let c2 = (c - s0).max(lmax);
            let d0 = c2 - (c - s0);
            let t0 = Instant::now();
            rebase(&cache, w, s0, d0, c - s0)?;
            stats.move_s += t0.elapsed().as_secs_f64();
            for row in slots.iter_mut().flatten() {
                row.start = row.start - s0 + d0;
            }
            c = c2;
            stats.rebases += 1;
        }
        // one decode step over slots 0..w (an empty slot feeds a dummy token that only
        // sees itself)
        let mut ids = vec![0u32; w];
        let mut positions = vec![vec![0usize]; w];
        let mut ranges = vec![0u32; 2 * w];
        // the rows of one prompt hold its positions alike: each names the first such
        // row, whose copy the attention then reads for all of them
        let mut shared = vec![0u32; 3 * w];
        let mut first_of: Vec<(usize, usize)> = Vec::new();
        for s in 0..w {
            let (lo, id, pos) = match &slots[s] {
                Some(row) => (row.start, row.next, c - row.start),
                None => (c, 0, 0),
            };
            ids[s] = id;
            positions[s][0] = pos;
            ranges[2 * s] = lo as u32;
            ranges[2 * s + 1] = (c + 1) as u32;
            let (lead, start, len) = match &slots[s] {
                Some(row) => {
                    let pi = row.item / n;
                    let lead = match first_of.iter().find(|&&(p, _)| p == pi) {
                        Some(&(_, l)) => l,
                        None => {
                            first_of.push((pi, s));
                            s
                        }
                    };
                    let start = slots[lead].as_ref().map_or(lo, |r| r.start);
                    (lead, start, prompts[pi].len())
                }
                None => (s, c, 0),
            };
            shared[3 * s..3 * s + 3].copy_from_slice(&[lead as u32, start as u32, len as u32]);
        }
        let mut view = KvCache {
            k: cache
                .k
                .iter()
                .map(|t| t.narrow(0, 0, w))
                .collect::<Result<_>>()?,
            v: cache
                .v
                .iter()
                .map(|t| t.narrow(0, 0, w))
                .collect::<Result<_>>()?,
            len: c,
            capacity: cap,
        };
        let t0 = Instant::now();
        let fwd = Forward {
            positions: Some(positions),
            kv_ranges: Some(Tensor::from_u32(ranges, &[w, 2], net.device)?),
            kv_shared: Some(shared.into()),
            cache: Some(&mut view),
            last_only: true,
            ..Default::default()
        };
        let logits = net.forward(&ids, w, 1, fwd)?.logits;
        // each live row's forced id or uniform; an empty slot takes id 0 and is ignored
        let (mut us, mut forced) = (vec![0.0f64; w], vec![0u32; w]);
        for (s, row) in slots[..w].iter().enumerate() {
            if let Some(row) = row {
                (forced[s], us[s]) = row.next_draw(p, v);
            }
        }
        let picks = sampling::sample_rows(&logits, p, &us, &forced)?;
        forward_s += t0.elapsed().as_secs_f64();
        c += 1;
        stats.steps += 1;
        stats.row_steps += w;
        stats.readback_bytes += match net.device {
            crate::tensor::Device::Cpu => w * v * 4,
            crate::tensor::Device::Gpu => w * 8,
        };
        for (s, (id, lp)) in picks.into_iter().enumerate() {
            let Some(row) = slots[s].as_mut() else {
                continue;
            };
            let forced = forced[s] != u32::MAX;
            stats.busy_row_steps += 1;
            if sink.emit(row, id, forced, lp)? {
                let row = slots[s].take().unwrap();
                sink.finish(row, &mut out);
            }
        }
    }
    let total = t_start.elapsed().as_secs_f64();
    stats.decode_s = total - stats.prefill_s;
    stats.host_s = total - stats.prefill_s - forward_s;
    // every token chosen, the first of each item (from its prompt's logits) included
    stats.decode_tokens = out.iter().flatten().map(|s| s.ids.len()).sum();
    Ok((
        out.into_iter()
            .map(|s| s.expect("every item ran"))
            .collect(),
        stats,
    ))
}

fn new_seq(item: usize, n: usize) -> Sequence {
    Sequence {
        prompt: item / n,
        sample: item % n,
        ids: vec![],
        logprobs: vec![],
        forced: 0,
        finish: Finish::Length,
    }
}

impl Row {
    /// What the next draw needs: the queued forced id (`u32::MAX` for none; an
    /// out-of-vocabulary one is dropped and the row samples instead) and the uniform of
    /// (seed, item, step).
    fn next_draw(&self, p: &SamplingParams, v: usize) -> (u32, f64) {
        let forced = self.queued.front().copied().filter(|&f| (f as usize) < v);
        let item = (p.item_offset + self.item) as u64;
        let u = sampling::uniform(p.seed, item, self.seq.ids.len() as u64);
        (forced.unwrap_or(u32::MAX), u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks hold consecutive prompts of at most PREFILL_TOKENS tokens in all, and a
    /// prompt longer than that alone.
    #[test]
    fn chunks_cover_every_prompt_in_order_within_the_budget() {
        let lens = [3000, 1000, 97, 4096, 5000, 1, 2];
        let prompts: Vec<Vec<u32>> = lens.iter().map(|&l| vec![1; l]).collect();
        let plan = plan_chunks(&prompts);
        assert_eq!(plan, vec![(0, 2), (2, 1), (3, 1), (4, 1), (5, 2)]);
        assert_eq!(plan_chunks(&prompts[..1]), vec![(0, 1)]);
    }
}
