//! The arithmetic steps: applying one, replaying a problem, and drawing legal ones.

use super::rng::SynthRng;
use super::SynthConfig;

/// One arithmetic step applied to the running value.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Add the operand.
    Add(u64),
    /// Subtract the operand.
    Sub(u64),
    /// Multiply by the operand.
    Mul(u64),
    /// Divide exactly by the operand.
    Div(u64),
}

impl Op {
    /// The operand of the step.
    pub fn operand(&self) -> u64 {
        match *self {
            Op::Add(n) | Op::Sub(n) | Op::Mul(n) | Op::Div(n) => n,
        }
    }

    /// The operator character used in annotations and the long form: `+ - * /`.
    pub fn symbol(&self) -> char {
        match self {
            Op::Add(_) => '+',
            Op::Sub(_) => '-',
            Op::Mul(_) => '*',
            Op::Div(_) => '/',
        }
    }

    /// The result of applying the step to `v`, or `None` unless it is a positive integer
    /// (underflow, overflow, zero, division by zero or an inexact division).
    pub fn apply(&self, v: u64) -> Option<u64> {
        let r = match *self {
            Op::Add(n) => v.checked_add(n)?,
            Op::Sub(n) => v.checked_sub(n)?,
            Op::Mul(n) => v.checked_mul(n)?,
            Op::Div(n) => exact_div(v, n)?,
        };
        (r > 0).then_some(r)
    }
}

/// `v / n` when `n` divides `v` exactly.
fn exact_div(v: u64, n: u64) -> Option<u64> {
    (n != 0 && v.is_multiple_of(n)).then(|| v / n)
}

/// Every value after each step, or `None` if some step is not a positive integer.
pub fn replay(start: u64, ops: &[Op]) -> Option<Vec<u64>> {
    let mut v = start;
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        v = op.apply(v)?;
        out.push(v);
    }
    Some(out)
}

/// `steps` legal operations starting from `start`.
pub(super) fn sample_ops(
    rng: &mut SynthRng,
    cfg: &SynthConfig,
    start: u64,
    steps: usize,
) -> Option<Vec<Op>> {
    let mut v = start;
    let mut ops = Vec::with_capacity(steps);
    for _ in 0..steps {
        let op = sample_op(rng, cfg, v)?;
        v = op.apply(v)?;
        ops.push(op);
    }
    Some(ops)
}

/// One legal operation from the value `v`.
///
/// The operation kind is drawn uniformly among the kinds that are legal from `v` (so an
/// illegal kind is never retried), then its operand uniformly within the legal range.
/// With a validated config addition or subtraction is always legal; `None` only if no
/// kind is.
fn sample_op(rng: &mut SynthRng, cfg: &SynthConfig, v: u64) -> Option<Op> {
    let add_hi = cfg.max_operand.min(cfg.max_value.saturating_sub(v));
    let sub_hi = cfg.max_operand.min(v.saturating_sub(1));
    let mul_hi = cfg.max_factor.min(cfg.max_value / v.max(1));
    let divisors: Vec<u64> = (2..=cfg.max_factor)
        .filter(|&k| v.is_multiple_of(k))
        .collect();
    let mut kinds: Vec<u8> = Vec::with_capacity(4);
    for (kind, legal) in [
        (0, add_hi >= 2),
        (1, sub_hi >= 2),
        (2, mul_hi >= 2),
        (3, !divisors.is_empty()),
    ] {
        if legal {
            kinds.push(kind);
        }
    }
    let op = match *rng.pick(&kinds)? {
        0 => Op::Add(rng.range(2, add_hi)),
        1 => Op::Sub(rng.range(2, sub_hi)),
        2 => Op::Mul(rng.range(2, mul_hi)),
        _ => Op::Div(*rng.pick(&divisors)?),
    };
    op.apply(v)
        .is_some_and(|r| r <= cfg.max_value)
        .then_some(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::synth::generate;
    use crate::recipes::synth::test_support::all;

    #[test]
    fn answers_replay_and_stay_in_range() {
        let cfg = SynthConfig {
            seed: 3,
            min_steps: 1,
            max_steps: 6,
            ..SynthConfig::default()
        };
        let s = generate(&cfg).unwrap();
        for p in all(&s) {
            assert!((cfg.min_steps..=cfg.max_steps).contains(&p.ops.len()));
            assert!((2..=cfg.max_start).contains(&p.start));
            let vals = replay(p.start, &p.ops).expect("legal ops");
            assert!(
                vals.iter().all(|&v| (1..=cfg.max_value).contains(&v)),
                "{vals:?}"
            );
            assert_eq!(p.answer, *vals.last().unwrap() as i64);
            for op in &p.ops {
                let n = op.operand();
                match op {
                    Op::Add(_) | Op::Sub(_) => assert!((2..=cfg.max_operand).contains(&n)),
                    Op::Mul(_) | Op::Div(_) => assert!((2..=cfg.max_factor).contains(&n)),
                }
            }
        }
    }
}
