//! The knobs of a synthetic data set and the range each one accepts.

/// Most steps a problem may have.
pub const MAX_STEPS_LIMIT: usize = 6;
/// Largest accepted `max_value` (six digits).
pub const MAX_VALUE_LIMIT: u64 = 999_999;
/// Smallest accepted `max_value`; keeps at least one operation legal from every value.
pub const MIN_VALUE_LIMIT: u64 = 10;
/// Most problems one call may generate, over all splits.
pub const MAX_TOTAL_PROBLEMS: usize = 1_000_000;

/// Knobs for [`generate`](super::generate).
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Seed for the whole data set.
    pub seed: u64,
    /// Number of training problems.
    pub n_train: usize,
    /// Number of development problems.
    pub n_dev: usize,
    /// Number of test problems.
    pub n_test: usize,
    /// Fewest operations per problem (1..=6).
    pub min_steps: usize,
    /// Most operations per problem (1..=6, at least `min_steps`).
    pub max_steps: usize,
    /// Largest starting value; the start is drawn from `2..=max_start`.
    pub max_start: u64,
    /// Largest addend or subtrahend; they are drawn from `2..=max_operand`.
    pub max_operand: u64,
    /// Largest multiplier or divisor (2..=9); they are drawn from `2..=max_factor`.
    pub max_factor: u64,
    /// Largest value any intermediate result may take; all stay in `1..=max_value`.
    pub max_value: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            n_train: 2000,
            n_dev: 200,
            n_test: 250,
            min_steps: 1,
            max_steps: 4,
            max_start: 99,
            max_operand: 99,
            max_factor: 9,
            max_value: 999,
        }
    }
}

impl SynthConfig {
    /// Checks every knob, naming the field and its accepted range on failure.
    pub fn validate(&self) -> Result<(), String> {
        check_steps(self.min_steps, self.max_steps)?;
        in_range("max_factor", self.max_factor, 2, 9)?;
        in_range(
            "max_value",
            self.max_value,
            MIN_VALUE_LIMIT,
            MAX_VALUE_LIMIT,
        )?;
        in_range("max_start", self.max_start, 2, self.max_value)?;
        in_range("max_operand", self.max_operand, 2, self.max_value)?;
        check_counts(self.n_train, self.n_dev, self.n_test)
    }
}

/// Err naming `field` unless `lo <= v <= hi`.
fn in_range(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!(
            "synth config: {field} = {v} is outside the accepted range {lo}..={hi}"
        ));
    }
    Ok(())
}

/// Step counts must lie in `1..=6` and be ordered.
fn check_steps(min_steps: usize, max_steps: usize) -> Result<(), String> {
    let hi = MAX_STEPS_LIMIT as u64;
    in_range("min_steps", min_steps as u64, 1, hi)?;
    in_range("max_steps", max_steps as u64, 1, hi)?;
    if min_steps > max_steps {
        return Err(format!(
            "synth config: min_steps = {min_steps} must not exceed max_steps = {max_steps}"
        ));
    }
    Ok(())
}

/// The three split sizes together must stay within [`MAX_TOTAL_PROBLEMS`].
fn check_counts(n_train: usize, n_dev: usize, n_test: usize) -> Result<(), String> {
    let total = n_train
        .checked_add(n_dev)
        .and_then(|t| t.checked_add(n_test));
    match total {
        Some(t) if t <= MAX_TOTAL_PROBLEMS => Ok(()),
        _ => Err(format!(
            "synth config: n_train + n_dev + n_test must be at most {MAX_TOTAL_PROBLEMS} \
             (got {n_train} + {n_dev} + {n_test})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::synth::generate;

    #[test]
    fn config_validation() {
        assert!(SynthConfig::default().validate().is_ok());
        let d = SynthConfig::default;
        let cases: Vec<(SynthConfig, &str)> = vec![
            (
                SynthConfig {
                    min_steps: 0,
                    ..d()
                },
                "min_steps",
            ),
            (
                SynthConfig {
                    max_steps: 7,
                    ..d()
                },
                "max_steps",
            ),
            (
                SynthConfig {
                    min_steps: 4,
                    max_steps: 2,
                    ..d()
                },
                "must not exceed",
            ),
            (
                SynthConfig {
                    max_factor: 1,
                    ..d()
                },
                "max_factor",
            ),
            (
                SynthConfig {
                    max_factor: 10,
                    ..d()
                },
                "max_factor",
            ),
            (
                SynthConfig {
                    max_value: 5,
                    ..d()
                },
                "max_value",
            ),
            (
                SynthConfig {
                    max_value: 1_000_000,
                    ..d()
                },
                "max_value",
            ),
            (
                SynthConfig {
                    max_start: 1,
                    ..d()
                },
                "max_start",
            ),
            (
                SynthConfig {
                    max_start: 5000,
                    ..d()
                },
                "max_start",
            ),
            (
                SynthConfig {
                    max_operand: 1,
                    ..d()
                },
                "max_operand",
            ),
            (
                SynthConfig {
                    n_train: 1_000_000,
                    ..d()
                },
                "n_train + n_dev + n_test",
            ),
            (
                SynthConfig {
                    n_train: usize::MAX,
                    ..d()
                },
                "n_train + n_dev + n_test",
            ),
        ];
        for (cfg, needle) in cases {
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(generate(&cfg).is_err());
        }
        let err = SynthConfig {
            max_steps: 7,
            ..d()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("1..=6"), "{err}");
    }
}
