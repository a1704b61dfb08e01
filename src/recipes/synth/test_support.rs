//! Helpers shared by the synth tests.

use super::{Problem, Splits, SynthConfig};

pub(super) fn small_cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        seed,
        n_train: 300,
        n_dev: 50,
        n_test: 50,
        ..SynthConfig::default()
    }
}

pub(super) fn all(s: &Splits) -> impl Iterator<Item = &Problem> {
    s.train.iter().chain(s.dev.iter()).chain(s.test.iter())
}

pub(super) fn num(s: &str) -> u64 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// `a op b` for the test's own checks.
pub(super) fn eval(a: u64, op: char, b: u64) -> Option<u64> {
    match op {
        '+' => a.checked_add(b),
        '-' => a.checked_sub(b),
        '*' => a.checked_mul(b),
        '/' if b != 0 && a.is_multiple_of(b) => Some(a / b),
        _ => None,
    }
}

/// Splits "a op b" on its single operator.
pub(super) fn split_binary(e: &str) -> (u64, char, u64) {
    let i = e
        .find(|c| "+-*/".contains(c))
        .unwrap_or_else(|| panic!("no operator in {e:?}"));
    let op = e[i..].chars().next().unwrap();
    (num(&e[..i]), op, num(&e[i + 1..]))
}
