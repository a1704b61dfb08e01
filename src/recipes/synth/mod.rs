//! Synthetic multi-step arithmetic word problems with two gold rationales.
//!
//! Each [`Problem`] starts from a positive integer and applies one to six operations
//! (`+ - * /`). Every intermediate value is a positive integer inside a configured range,
//! multipliers and divisors are single digits, and division is only used when it is exact.
//!
//! Two rationales are produced for every problem:
//!
//! * **short** ([`short_rationale`]): one line per step in the GSM8K style, each carrying a
//!   calculator annotation of the exact form `<<a op b=c>>c`, then `#### answer`.
//! * **long** ([`long_rationale`]): a plan line, then each step worked digit by digit
//!   (column addition and subtraction with carries and borrows, single-digit
//!   multiplication with carries, left-to-right long division with remainders), a check of
//!   the last step by its inverse, then `#### answer`. Every digit the long form emits
//!   depends only on a few nearby digits, so a very small model can execute it token by
//!   token. The wording is fixed: the same operation is always phrased the same way.
//!
//! Generation is deterministic for a seed: the module carries its own xoshiro256**
//! generator (seeded through splitmix64), so the output does not depend on any external
//! crate version or on the platform. Question texts are unique within and across splits.
//!
//! Long-form wording, by example:
//!
//! ```text
//! Plan: start 48, then -13, then *6, then /3.
//! 48 - 13: ones 8-3=5, tens 4-1=3, so 35.
//! 35 * 6: 5*6=30 write 0 carry 3, 3*6=18+3=21, so 210.
//! 210 / 3: 2/3=0 r 2, 21/3=7 r 0, 0/3=0 r 0, so 70.
//! Check: 70 * 3 = 210. Yes.
//! #### 70
//! ```
//!
//! Borrows read `ones 3-8 borrow 13-8=5`; the next column then subtracts the borrowed one
//! last, as in `tens 0-7-1 borrow 10-7-1=2`. Additions pad the shorter number with zeros
//! (`hundreds 4+0+1=5`); the last column of an addition or multiplication writes its full
//! value (`tens 7+5+1=13, so 134.`). Division walks every digit from the left, so leading
//! partial dividends smaller than the divisor show up as `2/3=0 r 2` and the leading zero
//! quotient digits are dropped in the `so N.` result.

use std::collections::HashSet;

mod config;
mod long;
mod ops;
mod phrasing;
mod rng;
mod short;
#[cfg(test)]
mod test_support;

pub use config::{
    SynthConfig, MAX_STEPS_LIMIT, MAX_TOTAL_PROBLEMS, MAX_VALUE_LIMIT, MIN_VALUE_LIMIT,
};
pub use long::long_rationale;
pub use ops::{replay, Op};
pub use rng::SynthRng;
pub use short::short_rationale;

use ops::sample_ops;
use phrasing::write_question;

/// Consecutive draws without a new question after which a split is declared exhausted.
const MAX_CONSECUTIVE_MISSES: usize = 20_000;

/// One generated word problem with its gold answer and rationales.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The word problem, ending with a single question sentence.
    pub question: String,
    /// The gold answer (the value after the last step).
    pub answer: i64,
    /// The starting value.
    pub start: u64,
    /// The steps, in order.
    pub ops: Vec<Op>,
    /// GSM8K-style rationale with `<<a op b=c>>c` annotations, ending `#### answer`.
    pub short: String,
    /// Digit-level chain of thought, ending `#### answer`.
    pub long: String,
}

/// The three disjoint splits.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub train: Vec<Problem>,
    pub dev: Vec<Problem>,
    pub test: Vec<Problem>,
}

/// Generates the three splits for `cfg`.
///
/// Each split draws from its own stream derived from the seed. The test split is drawn
/// first, then dev, then train, and every question text is deduplicated against all
/// earlier ones, so the test split for a seed does not change when `n_train` or `n_dev`
/// change. Returns Err if the configuration is invalid or if the problem space runs out
/// of unique questions within a bounded number of attempts.
pub fn generate(cfg: &SynthConfig) -> Result<Splits, String> {
    cfg.validate()?;
    let mut seen = HashSet::new();
    let test = fill_split(cfg, "test", 3, cfg.n_test, &mut seen)?;
    let dev = fill_split(cfg, "dev", 2, cfg.n_dev, &mut seen)?;
    let train = fill_split(cfg, "train", 1, cfg.n_train, &mut seen)?;
    Ok(Splits { train, dev, test })
}

/// Draws `n` problems with questions not yet in `seen`, from the stream for `salt`.
fn fill_split(
    cfg: &SynthConfig,
    name: &str,
    salt: u64,
    n: usize,
    seen: &mut HashSet<String>,
) -> Result<Vec<Problem>, String> {
    let mut rng = SynthRng::new(cfg.seed ^ salt.wrapping_mul(0xA076_1D64_78BD_642F));
    // Bounded work: at most 50 draws per problem overall, and never a long run of repeats.
    let max_attempts = n.saturating_mul(50).saturating_add(1000);
    let mut out = Vec::with_capacity(n);
    let (mut attempts, mut misses) = (0usize, 0usize);
    while out.len() < n {
        if attempts >= max_attempts || misses >= MAX_CONSECUTIVE_MISSES {
            return Err(exhausted(name, n, out.len(), attempts));
        }
        attempts += 1;
        misses += 1;
        if let Some(p) = make_problem(&mut rng, cfg) {
            if seen.insert(p.question.clone()) {
                out.push(p);
                misses = 0;
            }
        }
    }
    Ok(out)
}

/// The error for a split that could not be filled with unique questions.
fn exhausted(name: &str, wanted: usize, got: usize, attempts: usize) -> String {
    format!(
        "synth: could only find {got} of {wanted} unique {name} problems after {attempts} \
         attempts; the problem space is exhausted, so lower the split sizes or widen \
         max_start / max_operand / max_value / the step range"
    )
}

/// One random problem, or `None` if its steps could not be drawn legally.
fn make_problem(rng: &mut SynthRng, cfg: &SynthConfig) -> Option<Problem> {
    let steps = rng.range(cfg.min_steps as u64, cfg.max_steps as u64) as usize;
    let start = rng.range(2, cfg.max_start);
    let ops = sample_ops(rng, cfg, start, steps)?;
    let answer = *replay(start, &ops)?.last()?;
    let question = write_question(rng, start, &ops);
    Some(Problem {
        question,
        answer: i64::try_from(answer).ok()?,
        start,
        short: short_rationale(start, &ops),
        long: long_rationale(start, &ops),
        ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::synth::test_support::{all, small_cfg};

    /// Pins the default data set so any change to the stream or wording is noticed.
    #[test]
    fn default_output_is_pinned() {
        let s = generate(&SynthConfig::default()).unwrap();
        assert_eq!(
            s.test[0].question,
            "Kenji starts with 36 apples. He gets 8 more apples from a friend. Next, he gives \
             away 38 apples. Next, he receives 27 more apples as a gift. How many apples does \
             Kenji have now?"
        );
        assert_eq!(s.train[0].start, 90);
        assert_eq!(
            s.train[0].ops,
            vec![Op::Mul(2), Op::Sub(23), Op::Sub(4), Op::Div(9)]
        );
        assert_eq!(s.train[0].answer, 17);
    }

    #[test]
    fn determinism() {
        let a = generate(&small_cfg(11)).unwrap();
        let b = generate(&small_cfg(11)).unwrap();
        let c = generate(&small_cfg(12)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.train, c.train);
        assert_ne!(a.test, c.test);
    }

    #[test]
    fn test_split_independent_of_train_size() {
        let a = generate(&small_cfg(5)).unwrap();
        let b = generate(&SynthConfig {
            n_train: 40,
            ..small_cfg(5)
        })
        .unwrap();
        assert_eq!(a.test, b.test);
        assert_eq!(a.dev, b.dev);
    }

    #[test]
    fn sizes_and_disjointness() {
        let cfg = SynthConfig::default();
        let s = generate(&cfg).unwrap();
        assert_eq!((s.train.len(), s.dev.len(), s.test.len()), (2000, 200, 250));
        let mut seen = HashSet::new();
        for p in all(&s) {
            assert!(
                seen.insert(p.question.as_str()),
                "duplicate question {}",
                p.question
            );
        }
    }

    #[test]
    fn invalid_ops_do_not_panic() {
        let bad = [Op::Sub(50)];
        assert!(long_rationale(10, &bad).ends_with("Invalid step."));
        assert!(short_rationale(10, &[Op::Div(3)]).ends_with("Invalid step."));
        assert!(short_rationale(10, &[Op::Div(0)]).ends_with("Invalid step."));
        assert_eq!(replay(10, &[Op::Sub(10)]), None);
        assert_eq!(long_rationale(5, &[]), "Plan: start 5.\n#### 5");
    }

    #[test]
    fn exhausted_space_is_an_error() {
        let cfg = SynthConfig {
            // Start is always 2: 9 step phrasings x 22 people x 22 things x 4 frames.
            n_train: 20_000,
            min_steps: 1,
            max_steps: 1,
            max_start: 2,
            max_operand: 2,
            max_factor: 2,
            max_value: 10,
            ..SynthConfig::default()
        };
        let err = generate(&cfg).unwrap_err();
        assert!(err.contains("exhausted"), "{err}");
    }

    #[test]
    fn print_examples_and_lengths() {
        let s = generate(&SynthConfig::default()).unwrap();
        for p in s.train.iter().filter(|p| p.ops.len() >= 3).take(3) {
            println!(
                "QUESTION: {}\nSHORT:\n{}\nLONG:\n{}\n",
                p.question, p.short, p.long
            );
        }
        let stat = |f: &dyn Fn(&Problem) -> usize| {
            let v: Vec<usize> = s.train.iter().map(f).collect();
            (
                v.iter().sum::<usize>() as f64 / v.len() as f64,
                v.iter().copied().max().unwrap_or(0),
            )
        };
        let (qm, qx) = stat(&|p| p.question.chars().count());
        let (sm, sx) = stat(&|p| p.short.chars().count());
        let (lm, lx) = stat(&|p| p.long.chars().count());
        println!("chars over {} train problems: question mean {qm:.1} max {qx}; short mean {sm:.1} max {sx}; long mean {lm:.1} max {lx}", s.train.len());
        let four: Vec<usize> = s
            .train
            .iter()
            .filter(|p| p.ops.len() == 4)
            .map(|p| p.long.chars().count())
            .collect();
        println!(
            "long chars, 4-step problems: mean {:.1} max {}",
            four.iter().sum::<usize>() as f64 / four.len().max(1) as f64,
            four.iter().max().unwrap_or(&0)
        );
        let mut kinds = [0usize; 4];
        for op in s.train.iter().flat_map(|p| &p.ops) {
            kinds[match op {
                Op::Add(_) => 0,
                Op::Sub(_) => 1,
                Op::Mul(_) => 2,
                Op::Div(_) => 3,
            }] += 1;
        }
        println!("op counts add/sub/mul/div: {kinds:?}");
        assert!(lx < 800);
    }
}
