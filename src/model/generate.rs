//! Generation: N continuations for each of several prompts, run by the sampling engine
//! (`engine.rs`: continuous batching over a pool of rows, a KV cache on the device) and
//! chosen by `sampling.rs` (greedy, temperature, top-k, top-p, min-p; reproducible for a
//! seed whatever the pool size). Each row's rotary positions start at 0 at its prompt's
//! first token and its key range covers its own prompt and tokens only, as transformers
//! does with an attention mask.

use rand::Rng;
use serde::Serialize;

pub use super::engine::Hooks;
use super::tokenizer::Tok;
use super::transformer::Transformer;
use crate::error::{Error, Result};
use crate::tensor::Device;

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
    /// Keep tokens at least this fraction as likely as the most likely one (0: off).
    pub min_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Do not stop at EOS ids.
    pub ignore_eos: bool,
    pub eos_ids: Vec<u32>,
    /// Stop once the decoded continuation contains one of these.
    pub stop_strings: Vec<String>,
    /// Rows decoding at once; items beyond them wait for a row to end (0: one row per
    /// item, every item at once).
    pub rows: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_new_tokens: 64,
            seed: 0,
            ignore_eos: false,
            eos_ids: vec![],
            stop_strings: vec![],
            rows: 0,
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

/// Pick the next token from one row of logits with one uniform from `rng` (see
/// [`super::sampling`]: HF's order of filters, temperature, top-k, top-p, min-p, as
/// thresholds, and an inverse-CDF draw in id order; nothing sorts the vocabulary).
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut impl Rng) -> u32 {
    super::sampling::choose(logits, p, rng.random::<f64>())
}

/// Generate `n` continuations of every prompt, `p.rows` rows at a time (0: all at once).
/// Each prompt is prefilled once; its cached keys and values are copied to the rows that
/// sample from it. `on_token(item, id)` sees each token as it is chosen
/// (item = prompt * n + sample).
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
    steer: Option<&mut Steer<'_>>,
) -> Result<(Vec<Sequence>, GenStats)> {
    let mut hooks = Hooks {
        on_token,
        on_finish: None,
        steer,
    };
    generate_with(net, prompts, n, p, tok, &mut hooks)
}

/// [`generate`] with every hook the engine offers (tokens, finished items, steering).
pub fn generate_with(
    net: &Transformer,
    prompts: &[Vec<u32>],
    n: usize,
    p: &SamplingParams,
    tok: Option<&Tok>,
    hooks: &mut Hooks<'_, '_>,
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
    let need_text = !p.stop_strings.is_empty() || hooks.steer.is_some();
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
    if !(0.0..1.0).contains(&p.min_p) {
        return Err(Error::invalid(
            "generate",
            format!("min_p {} is out of range: 0 <= p < 1", p.min_p),
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
    let rows = if p.rows == 0 { rows } else { p.rows.min(rows) };
    let kv_bytes = [
        rows,
        cap + (cap / 4).max(32),
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
    super::engine::run(net, prompts, n, p, tk, p.rows, need_text, hooks)
}
