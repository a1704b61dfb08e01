//! Choosing the next token from one row of logits: greedy, or temperature with top-k,
//! top-p and min-p, without sorting the vocabulary.
//!
//! Every filter keeps a prefix of the vocabulary ordered by (logit descending, id
//! ascending), so it is a cut `(θ, last)`: token i stays when `x_i > θ`, or `x_i = θ` and
//! `i <= last`. The filtered distribution is `w_i = e^((x_i - max) / T)` over the kept
//! tokens, and several filters keep the shortest of their prefixes:
//! - top-k: θ is the k-th largest logit, and every token tied with it stays (HF's top-k);
//! - top-p: over the top-k survivors, the shortest prefix whose mass reaches p (HF: a
//!   token stays while the mass before it is below p); the cut is its last token;
//! - min-p: tokens whose probability is at least `min_p` times the largest one, that is
//!   `x_i >= max + T ln(min_p)`.
//!
//! The draw is an inverse CDF in id order: one uniform u per (seed, item, step)
//! ([`uniform`]), and the first kept id at which the running sum of weights passes
//! `u * total`. The randomness is a function of the seed, the item and the step, never
//! of the batch a row landed in, so continuous batching is reproducible.

use crate::backend::cpu::vmath;
use crate::error::Result;
use crate::tensor::{Device, Tensor};

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
    /// The number of this call's first item in a larger run (an MPI rank's share of one):
    /// draws use `(seed, item_offset + item, step)`, so a sample is the same however the
    /// run was split.
    pub item_offset: usize,
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
            item_offset: 0,
        }
    }
}

/// The token of every row of `logits` `(rows, V)` (any leading shape) and its untempered
/// log-prob, on the logits' device: `forced[r]` when it is below V, else the draw with
/// uniform `u[r]`. On the GPU (`shaders/sample.wgsl`) only the ids and log-probs are read
/// back; the kernel sums in f32 and its uniform is `u[r]` rounded to f32, so a draw that
/// falls within rounding of a boundary between two tokens may differ from the CPU's.
pub fn sample_rows(
    logits: &Tensor,
    p: &SamplingParams,
    u: &[f64],
    forced: &[u32],
) -> Result<Vec<(u32, f32)>> {
    match logits.device() {
        Device::Gpu => {
            use crate::backend::gpu::kernels::{sample_rows, SampleRule};
            let rule = SampleRule {
                temperature: p.temperature,
                top_k: p.top_k,
                top_p: p.top_p,
                min_p: p.min_p,
            };
            let u: Vec<f32> = u.iter().map(|&x| x as f32).collect();
            sample_rows(logits, rule, &u, forced)
        }
        Device::Cpu => {
            let v = *logits.shape().last().unwrap_or(&1).max(&1);
            // read in place (no copy of the logits); rows in parallel on the threads that
            // stay awake between ops
            logits.cpu_read("sample", |x: &[f32]| {
                let rows = (x.len() / v).min(u.len()).min(forced.len());
                crate::backend::cpu::threads::par_map(rows, |r| {
                    pick(&x[r * v..(r + 1) * v], p, u[r], forced[r])
                })
            })
        }
    }
}

/// A uniform in [0, 1) for step `step` of item `item` under `seed` (SplitMix64's
/// finaliser over a mix of the three; 53 bits).
pub fn uniform(seed: u64, item: u64, step: u64) -> f64 {
    let mut z = seed
        ^ item.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_add(1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    for _ in 0..2 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// `log_softmax(logits)[id]`: f32 exponentials (vectorised), summed in f64.
pub fn logprob_of(logits: &[f32], id: u32) -> f32 {
    let m = vmath::max(logits);
    let z = vmath::exp_weights(logits, m, 1.0, None);
    ((logits[id as usize] - m) as f64 - z.ln()) as f32
}

/// First maximum, as torch.argmax.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Whether `p` filters at all (top-k, top-p or min-p active).
fn filters(p: &SamplingParams, v: usize) -> bool {
    (p.top_k > 0 && p.top_k < v) || p.top_p < 1.0 || p.min_p > 0.0
}

thread_local! {
    /// [`pick`]'s tempered weights of one row: a vocabulary of floats, kept per thread
    /// (a fresh zeroed one per row and step cost a decoding step of 96 rows 19 MB of
    /// allocation and memset).
    static WEIGHTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One row's token and its untempered log-probability: `forced` when it is below V,
/// else the draw for uniform `u` in [0, 1) (see the module comment).
pub fn pick(logits: &[f32], p: &SamplingParams, u: f64, forced: u32) -> (u32, f32) {
    let v = logits.len();
    if (forced as usize) >= v && p.temperature > 0.0 && !filters(p, v) {
        // plain temperature sampling: the tempered weights and the untempered sum in one
        // pass (the same numbers as `choose` then `logprob_of`)
        let m = vmath::max(logits);
        return WEIGHTS.with_borrow_mut(|w| {
            // every element is written below: the buffer only changes length
            w.resize(v, 0.0);
            let (total, z) = vmath::exp_weights_pair(logits, m, 1.0 / p.temperature, w);
            let id = draw(w, None, total, u);
            (id, ((logits[id as usize] - m) as f64 - z.ln()) as f32)
        });
    }
    let id = if (forced as usize) < v {
        forced
    } else {
        choose(logits, p, u)
    };
    (id, logprob_of(logits, id))
}

/// The drawn token alone (see [`pick`]).
pub fn choose(logits: &[f32], p: &SamplingParams, u: f64) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    let v = logits.len();
    let inv_t = 1.0 / p.temperature;
    let m = vmath::max(logits);
    let mut w = vec![0.0f32; v];
    let total = vmath::exp_weights(logits, m, inv_t, Some(&mut w));
    if !filters(p, v) {
        return draw(&w, None, total, u);
    }
    let cut = cut(logits, &w, m, p);
    // the kept mass, in the same order as the draw adds it
    let total: f64 = (0..v)
        .filter(|&i| cut.keeps(logits[i], i))
        .map(|i| w[i] as f64)
        .sum();
    draw(&w, Some((logits, cut)), total, u)
}

/// A prefix of the vocabulary in (logit descending, id ascending) order: the tokens
/// with logit above `theta`, and those equal to it up to id `last`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut {
    pub theta: f32,
    pub last: usize,
}

impl Cut {
    pub const ALL: Cut = Cut {
        theta: f32::NEG_INFINITY,
        last: usize::MAX,
    };

    pub fn keeps(&self, x: f32, i: usize) -> bool {
        x > self.theta || (x == self.theta && i <= self.last)
    }

    /// The shorter of two prefixes.
    fn min(self, o: Cut) -> Cut {
        if (o.theta, usize::MAX - o.last) > (self.theta, usize::MAX - self.last) {
            o
        } else {
            self
        }
    }
}

/// The prefix `p`'s top-k, top-p and min-p keep together. `w` holds the tempered
/// weights, `m` the largest logit.
pub fn cut(logits: &[f32], w: &[f32], m: f32, p: &SamplingParams) -> Cut {
    let v = logits.len();
    let mut c = Cut::ALL;
    if p.top_k > 0 && p.top_k < v {
        let mut xs = logits.to_vec();
        let (_, kth, _) = xs.select_nth_unstable_by(p.top_k - 1, |a, b| b.total_cmp(a));
        c = Cut {
            theta: *kth,
            last: usize::MAX,
        };
    }
    if p.top_p < 1.0 {
        c = c.min(nucleus(logits, w, c, p.top_p));
    }
    if p.min_p > 0.0 {
        c = c.min(Cut {
            theta: m + p.temperature * p.min_p.ln(),
            last: usize::MAX,
        });
    }
    c
}

/// Top-p over the tokens `within` keeps: the shortest most-likely prefix whose mass
/// reaches `top_p` of theirs. Sorts growing slices of the most likely candidates only
/// (64, then 4x more), never the whole vocabulary.
fn nucleus(logits: &[f32], w: &[f32], within: Cut, top_p: f32) -> Cut {
    let mut rest: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| within.keeps(logits[i as usize], i as usize))
        .collect();
    let target = top_p as f64 * rest.iter().map(|&i| w[i as usize] as f64).sum::<f64>();
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let (mut cum, mut chunk) = (0.0f64, 64usize);
    let mut last: Option<Cut> = None;
    while !rest.is_empty() {
        let take = chunk.min(rest.len());
        if take < rest.len() {
            rest.select_nth_unstable_by(take - 1, by_logit);
        }
        let tail = rest.split_off(take);
        let mut head = std::mem::replace(&mut rest, tail);
        head.sort_unstable_by(by_logit);
        for id in head {
            if let (true, Some(c)) = (cum >= target, last) {
                return c;
            }
            cum += w[id as usize] as f64;
            last = Some(Cut {
                theta: logits[id as usize],
                last: id as usize,
            });
        }
        chunk *= 4;
    }
    last.unwrap_or(within)
}

/// The first id (of those the cut keeps, when given) at which the running sum of weights
/// passes `u * total`; the last kept positive weight takes what rounding leaves over.
fn draw(w: &[f32], keep: Option<(&[f32], Cut)>, total: f64, u: f64) -> u32 {
    let mut left = u * total;
    let mut last = 0;
    for (i, &x) in w.iter().enumerate() {
        if let Some((logits, cut)) = keep {
            if !cut.keeps(logits[i], i) {
                continue;
            }
        }
        let x = x as f64;
        if x > 0.0 {
            if left < x {
                return i as u32;
            }
            last = i;
        }
        left -= x;
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniforms_are_spread_and_keyed_by_all_three() {
        let a = uniform(1, 2, 3);
        assert!((0.0..1.0).contains(&a));
        assert_ne!(a, uniform(2, 2, 3));
        assert_ne!(a, uniform(1, 3, 3));
        assert_ne!(a, uniform(1, 2, 4));
        // roughly uniform: the mean of many is near 1/2, and the deciles are filled
        let n = 20_000;
        let mut dec = [0usize; 10];
        let mut sum = 0.0;
        for i in 0..n {
            let u = uniform(7, i / 100, i % 100);
            sum += u;
            dec[(u * 10.0) as usize] += 1;
        }
        assert!((sum / n as f64 - 0.5).abs() < 0.01);
        assert!(dec.iter().all(|&d| (1_700..2_300).contains(&d)), "{dec:?}");
    }

    #[test]
    fn thresholds_keep_what_each_filter_names() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let p = |k: usize, tp: f32, mp: f32| SamplingParams {
            temperature: 1.0,
            top_k: k,
            top_p: tp,
            min_p: mp,
            ..Default::default()
        };
        let m = 3.0;
        let w: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
        let kept = |c: Cut| -> Vec<usize> { (0..5).filter(|&i| c.keeps(logits[i], i)).collect() };
        // top-k keeps ties with the k-th
        assert_eq!(kept(cut(&logits, &w, m, &p(1, 1.0, 0.0))), [1, 3]);
        assert_eq!(kept(cut(&logits, &w, m, &p(3, 1.0, 0.0))), [1, 2, 3]);
        // top-p walks (logit desc, id asc): id 1 alone holds 0.40 of the mass, the two
        // 3.0s 2 / (2 + e^-1 + e^-2 + e^-4) = 0.79
        assert_eq!(kept(cut(&logits, &w, m, &p(0, 0.01, 0.0))), [1]);
        assert_eq!(kept(cut(&logits, &w, m, &p(0, 0.75, 0.0))), [1, 3]);
        assert_eq!(kept(cut(&logits, &w, m, &p(0, 0.85, 0.0))), [1, 2, 3]);
        // min-p 0.3: e^(x - 3) >= 0.3 keeps x >= 3 + ln 0.3 = 1.80
        assert_eq!(kept(cut(&logits, &w, m, &p(0, 1.0, 0.3))), [1, 2, 3]);
        assert_eq!(kept(cut(&logits, &w, m, &p(0, 1.0, 0.5))), [1, 3]);
        // together: the shortest prefix
        assert_eq!(kept(cut(&logits, &w, m, &p(3, 0.01, 0.3))), [1]);
        assert_eq!(cut(&logits, &w, m, &p(0, 1.0, 0.0)), Cut::ALL);
    }

    #[test]
    fn the_draw_walks_the_kept_mass_in_id_order() {
        let logits = [0.0f32, 0.0, 0.0, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        for (u, want) in [(0.0, 0), (0.24, 0), (0.26, 1), (0.6, 2), (0.99, 3)] {
            assert_eq!(choose(&logits, &p, u), want, "u = {u}");
        }
        let logits = [5.0f32, 1.0, 5.0, 1.0];
        let k2 = SamplingParams {
            top_k: 2,
            ..p.clone()
        };
        assert_eq!(choose(&logits, &k2, 0.4), 0);
        assert_eq!(choose(&logits, &k2, 0.6), 2);
        assert_eq!(
            choose(
                &logits,
                &SamplingParams {
                    temperature: 0.0,
                    ..p
                },
                0.9
            ),
            0
        );
    }

    #[test]
    fn pick_draws_and_scores_as_choose_and_logprob_of() {
        // the one-pass path for plain temperature against the two functions it stands
        // for, bit for bit, over uniforms across the range
        let logits = crate::util::randn_vec(5_000, 3.0, 11);
        for t in [0.3f32, 0.7, 1.0, 1.6] {
            let p = SamplingParams {
                temperature: t,
                ..Default::default()
            };
            for i in 0..40 {
                let u = uniform(5, i, 0);
                let (id, lp) = pick(&logits, &p, u, u32::MAX);
                assert_eq!(id, choose(&logits, &p, u), "t {t} u {u}");
                assert_eq!(
                    lp.to_bits(),
                    logprob_of(&logits, id).to_bits(),
                    "t {t} u {u}"
                );
            }
        }
    }
}
