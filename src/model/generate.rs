//! Generation: N continuations for each of several prompts, run by the sampling engine
//! (`engine.rs`: continuous batching over a pool of rows, a KV cache on the device) and
//! chosen by `sampling.rs` (greedy, temperature, top-k, top-p, min-p; reproducible for a
//! seed whatever the pool size). Each row's rotary positions start at 0 at its prompt's
//! first token and its key range covers its own prompt and tokens only, as transformers
//! does with an attention mask.

use rand::Rng;

pub use super::engine::{Finish, GenStats, Hooks, Sequence, Steer};
pub use super::sampling::SamplingParams;
use super::tokenizer::Tok;
use super::transformer::Transformer;
use crate::error::{Error, Result};
use crate::tensor::Device;

/// Largest KV cache a generation call may allocate.
const MAX_KV_BYTES: usize = 64 << 30;

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
