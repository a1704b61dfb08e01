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

// ---------------------------------------------------------------------------------------
// Seeded generator
// ---------------------------------------------------------------------------------------

/// One splitmix64 step: advances `state` and returns a well-mixed 64-bit value.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small xoshiro256** generator, seeded through splitmix64.
///
/// The stream for a given seed is fixed by this file alone.
#[derive(Clone, Debug)]
pub struct SynthRng {
    s: [u64; 4],
}

impl SynthRng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        SynthRng { s }
    }

    /// The next raw 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform value in `0..n` (0 when `n` is 0 or 1), without modulo bias.
    ///
    /// Rejection sampling: a draw is rejected with probability below `n / 2^64`, so the
    /// expected number of draws is essentially one.
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let limit = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < limit {
                return x % n;
            }
        }
    }

    /// A uniform value in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo).saturating_add(1))
    }

    /// A uniformly chosen element of `xs`, or `None` when it is empty.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> Option<&'a T> {
        xs.get(self.below(xs.len() as u64) as usize)
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Most steps a problem may have.
pub const MAX_STEPS_LIMIT: usize = 6;
/// Largest accepted `max_value` (six digits).
pub const MAX_VALUE_LIMIT: u64 = 999_999;
/// Smallest accepted `max_value`; keeps at least one operation legal from every value.
pub const MIN_VALUE_LIMIT: u64 = 10;
/// Most problems one call may generate, over all splits.
pub const MAX_TOTAL_PROBLEMS: usize = 1_000_000;
/// Consecutive draws without a new question after which a split is declared exhausted.
const MAX_CONSECUTIVE_MISSES: usize = 20_000;

/// Knobs for [`generate`].
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

// ---------------------------------------------------------------------------------------
// Operations and problems
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------

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

/// `steps` legal operations starting from `start`.
fn sample_ops(rng: &mut SynthRng, cfg: &SynthConfig, start: u64, steps: usize) -> Option<Vec<Op>> {
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

// ---------------------------------------------------------------------------------------
// Question text
// ---------------------------------------------------------------------------------------

/// A named person with the pronouns the templates need.
struct Person {
    name: &'static str,
    subj: &'static str,
    poss: &'static str,
}

/// What the person holds: `noun` follows numbers and "How many"; `stuff` follows a
/// possessive ("her money", "his rope"). Money uses its own add/subtract verbs.
struct Thing {
    noun: &'static str,
    stuff: &'static str,
    money: bool,
}

const fn she(name: &'static str) -> Person {
    Person {
        name,
        subj: "she",
        poss: "her",
    }
}

const fn he(name: &'static str) -> Person {
    Person {
        name,
        subj: "he",
        poss: "his",
    }
}

const PEOPLE: [Person; 22] = [
    she("Mia"),
    he("Liam"),
    she("Ava"),
    he("Noah"),
    she("Zoe"),
    he("Omar"),
    she("Lena"),
    he("Ravi"),
    she("Sofia"),
    he("Kenji"),
    she("Amara"),
    he("Diego"),
    she("Priya"),
    he("Lucas"),
    she("Hana"),
    he("Mateo"),
    she("Nora"),
    he("Tariq"),
    she("Ines"),
    he("Felix"),
    she("Yara"),
    he("Owen"),
];

/// A countable object: its plural serves as both noun forms.
const fn item(noun: &'static str) -> Thing {
    Thing {
        noun,
        stuff: noun,
        money: false,
    }
}

/// A measured quantity such as "liters of juice" / "juice".
const fn unit(noun: &'static str, stuff: &'static str) -> Thing {
    Thing {
        noun,
        stuff,
        money: false,
    }
}

const THINGS: [Thing; 22] = [
    item("marbles"),
    item("stickers"),
    item("apples"),
    item("pencils"),
    item("cards"),
    item("shells"),
    item("beads"),
    item("stamps"),
    item("cookies"),
    item("books"),
    item("buttons"),
    item("balloons"),
    item("crayons"),
    item("candies"),
    item("eggs"),
    item("toy cars"),
    Thing {
        noun: "dollars",
        stuff: "money",
        money: true,
    },
    unit("meters of rope", "rope"),
    unit("liters of juice", "juice"),
    unit("kilograms of flour", "flour"),
    unit("cups of rice", "rice"),
    unit("sheets of paper", "paper"),
];

/// The words naming "one k-th" for the "keeps only ..." division phrasing.
fn fraction_name(k: u64) -> Option<&'static str> {
    let names = [
        "half",
        "one third",
        "one fourth",
        "one fifth",
        "one sixth",
        "one seventh",
        "one eighth",
        "one ninth",
    ];
    names.get(usize::try_from(k.checked_sub(2)?).ok()?).copied()
}

/// The whole question: opening fact, one sentence per step, one question sentence.
fn write_question(rng: &mut SynthRng, start: u64, ops: &[Op]) -> String {
    let who = rng.pick(&PEOPLE).unwrap_or(&PEOPLE[0]);
    let what = rng.pick(&THINGS).unwrap_or(&THINGS[0]);
    let mut parts = vec![opening(rng, who, what, start)];
    for (i, op) in ops.iter().enumerate() {
        let subject = step_subject(rng, who, i);
        parts.push(format!("{subject} {}.", step_phrase(rng, who, what, op)));
    }
    parts.push(closing(rng, who, what));
    parts.join(" ")
}

/// "Mia has 48 marbles." or "Mia starts with 48 marbles."
fn opening(rng: &mut SynthRng, who: &Person, what: &Thing, start: u64) -> String {
    let verb = if rng.below(2) == 0 {
        "has"
    } else {
        "starts with"
    };
    format!("{} {verb} {start} {}.", who.name, what.noun)
}

/// "How many marbles does Mia have now?" (or "... in the end?").
fn closing(rng: &mut SynthRng, who: &Person, what: &Thing) -> String {
    let when = if rng.below(2) == 0 {
        "now"
    } else {
        "in the end"
    };
    format!("How many {} does {} have {when}?", what.noun, who.name)
}

/// "She" for the first step, then "Then she" / "Next, she" / "After that, she".
fn step_subject(rng: &mut SynthRng, who: &Person, i: usize) -> String {
    if i == 0 {
        return capitalize(who.subj);
    }
    let link = rng
        .pick(&["Then", "Next,", "After that,"])
        .copied()
        .unwrap_or("Then");
    format!("{link} {}", who.subj)
}

/// `s` with its first letter upper-cased.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The verb phrase (without subject) describing one step.
fn step_phrase(rng: &mut SynthRng, who: &Person, what: &Thing, op: &Op) -> String {
    match *op {
        Op::Add(n) => add_phrase(rng, what, n),
        Op::Sub(n) => sub_phrase(rng, what, n),
        Op::Mul(k) => mul_phrase(rng, who, what, k),
        Op::Div(k) => div_phrase(rng, who, what, k),
    }
}

/// "buys 13 more marbles", "earns 13 more dollars", ...
fn add_phrase(rng: &mut SynthRng, what: &Thing, n: u64) -> String {
    let noun = what.noun;
    match (rng.below(3), what.money) {
        (0, false) => format!("buys {n} more {noun}"),
        (0, true) => format!("earns {n} more {noun}"),
        (1, _) => format!("gets {n} more {noun} from a friend"),
        _ => format!("receives {n} more {noun} as a gift"),
    }
}

/// "gives away 13 marbles", "spends 13 dollars", ...
fn sub_phrase(rng: &mut SynthRng, what: &Thing, n: u64) -> String {
    let noun = what.noun;
    match (rng.below(3), what.money) {
        (0, _) => format!("gives away {n} {noun}"),
        (1, false) => format!("sells {n} {noun}"),
        (1, true) => format!("spends {n} {noun}"),
        _ => format!("loses {n} {noun}"),
    }
}

/// Phrasings whose resulting total is exactly `k` times the current amount.
fn mul_phrase(rng: &mut SynthRng, who: &Person, what: &Thing, k: u64) -> String {
    let choices = if k == 2 || k == 3 { 3 } else { 2 };
    match rng.below(choices) {
        0 => format!("ends up with {k} times as many {} as before", what.noun),
        1 => format!(
            "gets more {} until {} has {k} times as many as before",
            what.noun, who.subj
        ),
        _ => {
            let verb = if k == 2 { "doubles" } else { "triples" };
            format!("{verb} {} {}", who.poss, what.stuff)
        }
    }
}

/// Phrasings whose result is exactly one `k`-th of the current amount.
fn div_phrase(rng: &mut SynthRng, who: &Person, what: &Thing, k: u64) -> String {
    let (poss, stuff) = (who.poss, what.stuff);
    match (rng.below(3), fraction_name(k)) {
        (0, Some(frac)) => format!("keeps only {frac} of {poss} {stuff} and gives the rest away"),
        (1, _) => format!("divides {poss} {stuff} into {k} equal parts and keeps one part"),
        _ => format!("splits {poss} {stuff} into {k} equal shares and keeps one share"),
    }
}

// ---------------------------------------------------------------------------------------
// Short rationale
// ---------------------------------------------------------------------------------------

/// The GSM8K-style rationale: one line per step, e.g.
/// `Take away 13: 48 - 13 = <<48-13=35>>35.`, then `#### 35`.
///
/// The ops should be legal from `start` (see [`replay`]); at the first step that is not,
/// the text ends with the line `Invalid step.` and has no `####` line.
pub fn short_rationale(start: u64, ops: &[Op]) -> String {
    let mut lines = Vec::with_capacity(ops.len() + 1);
    let mut v = start;
    for op in ops {
        let Some(r) = op.apply(v) else {
            lines.push("Invalid step.".to_string());
            return lines.join("\n");
        };
        let (n, s) = (op.operand(), op.symbol());
        lines.push(format!(
            "{}: {v} {s} {n} = <<{v}{s}{n}={r}>>{r}.",
            short_label(op)
        ));
        v = r;
    }
    lines.push(format!("#### {v}"));
    lines.join("\n")
}

/// The fixed lead-in for a short-rationale line.
fn short_label(op: &Op) -> String {
    match *op {
        Op::Add(n) => format!("Add {n}"),
        Op::Sub(n) => format!("Take away {n}"),
        Op::Mul(n) => format!("Multiply by {n}"),
        Op::Div(n) => format!("Divide by {n}"),
    }
}

// ---------------------------------------------------------------------------------------
// Long rationale
// ---------------------------------------------------------------------------------------

/// The digit-level chain of thought: plan, worked steps, inverse check, `#### answer`.
///
/// The ops should be legal from `start` (see [`replay`]); at the first step that is not,
/// the text ends with the line `Invalid step.` and has no check or `####` line.
pub fn long_rationale(start: u64, ops: &[Op]) -> String {
    let mut lines = vec![plan_line(start, ops)];
    let mut v = start;
    let mut last: Option<(u64, &Op, u64)> = None;
    for op in ops {
        let Some(r) = op.apply(v) else {
            lines.push("Invalid step.".to_string());
            return lines.join("\n");
        };
        lines.push(format!(
            "{v} {} {}: {}, so {r}.",
            op.symbol(),
            op.operand(),
            work(v, op)
        ));
        last = Some((v, op, r));
        v = r;
    }
    if let Some((before, op, after)) = last {
        lines.push(check_line(before, op, after));
    }
    lines.push(format!("#### {v}"));
    lines.join("\n")
}

/// `Plan: start 48, then -13, then *6, then /3.`
fn plan_line(start: u64, ops: &[Op]) -> String {
    let mut s = format!("Plan: start {start}");
    for op in ops {
        s.push_str(&format!(", then {}{}", op.symbol(), op.operand()));
    }
    s.push('.');
    s
}

/// The inverse of the last step, restated from numbers already on the page.
fn check_line(before: u64, op: &Op, after: u64) -> String {
    let n = op.operand();
    let (inv, n) = match op {
        Op::Add(_) => ('-', n),
        Op::Sub(_) => ('+', n),
        Op::Mul(_) => ('/', n),
        Op::Div(_) => ('*', n),
    };
    format!("Check: {after} {inv} {n} = {before}. Yes.")
}

/// The comma-separated digit work for one step.
fn work(v: u64, op: &Op) -> String {
    let clauses = match *op {
        Op::Add(n) => add_columns(v, n),
        Op::Sub(n) => sub_columns(v, n),
        Op::Mul(k) => mul_digits(v, k),
        Op::Div(k) => div_digits(v, k),
    };
    clauses.join(", ")
}

/// Decimal digits of `n`, ones digit first (`[0]` for zero).
fn digits_le(mut n: u64) -> Vec<u64> {
    let mut d = vec![n % 10];
    n /= 10;
    while n > 0 {
        d.push(n % 10);
        n /= 10;
    }
    d
}

/// The name of column `i` counted from the ones column.
fn place_name(i: usize) -> String {
    let names = [
        "ones",
        "tens",
        "hundreds",
        "thousands",
        "ten-thousands",
        "hundred-thousands",
        "millions",
    ];
    match names.get(i) {
        Some(s) => s.to_string(),
        None => format!("column{}", i + 1),
    }
}

/// Column addition from the ones digit: `ones 8+6=14 write 4 carry 1, ...`.
///
/// The shorter number is padded with zeros; the last column writes its whole sum.
fn add_columns(a: u64, b: u64) -> Vec<String> {
    let (da, db) = (digits_le(a), digits_le(b));
    let cols = da.len().max(db.len());
    let mut carry = 0;
    let mut out = Vec::with_capacity(cols);
    for i in 0..cols {
        let (x, y) = (digit(&da, i), digit(&db, i));
        let s = x + y + carry;
        let plus = if carry > 0 { "+1" } else { "" };
        let mut c = format!("{} {x}+{y}{plus}={s}", place_name(i));
        carry = 0;
        if i + 1 < cols && s >= 10 {
            c.push_str(&format!(" write {} carry 1", s - 10));
            carry = 1;
        }
        out.push(c);
    }
    out
}

/// Column subtraction from the ones digit, `a >= b`.
///
/// A column that needs a borrow reads `ones 3-8 borrow 13-8=5`; the next column subtracts
/// the borrowed one last: `tens 0-7-1 borrow 10-7-1=2`.
fn sub_columns(a: u64, b: u64) -> Vec<String> {
    let (da, db) = (digits_le(a), digits_le(b));
    let mut borrow = 0;
    let mut out = Vec::with_capacity(da.len());
    for i in 0..da.len() {
        let (x, y) = (digit(&da, i), digit(&db, i));
        let expr = if borrow > 0 {
            format!("{x}-{y}-1")
        } else {
            format!("{x}-{y}")
        };
        let need = y + borrow;
        let place = place_name(i);
        if x >= need {
            out.push(format!("{place} {expr}={}", x - need));
            borrow = 0;
        } else {
            out.push(format!("{place} {expr} borrow 1{expr}={}", x + 10 - need));
            borrow = 1;
        }
    }
    out
}

/// Multiplication by `k`, one digit of `a` at a time from the ones digit:
/// `5*6=30 write 0 carry 3, 3*6=18+3=21`.
fn mul_digits(a: u64, k: u64) -> Vec<String> {
    let da = digits_le(a);
    let mut carry = 0;
    let mut out = Vec::with_capacity(da.len());
    for (i, &d) in da.iter().enumerate() {
        let p = d * k;
        let s = p + carry;
        let mut c = format!("{d}*{k}={p}");
        if carry > 0 {
            c.push_str(&format!("+{carry}={s}"));
        }
        carry = 0;
        if i + 1 < da.len() && s >= 10 {
            c.push_str(&format!(" write {} carry {}", s % 10, s / 10));
            carry = s / 10;
        }
        out.push(c);
    }
    out
}

/// Long division by `k` from the leftmost digit: `2/3=0 r 2, 21/3=7 r 0, 0/3=0 r 0`.
///
/// Each partial dividend is the previous remainder followed by the next digit.
fn div_digits(a: u64, k: u64) -> Vec<String> {
    let mut rem = 0;
    let mut out = Vec::new();
    for &d in digits_le(a).iter().rev() {
        let part = rem * 10 + d;
        let (q, r) = (part / k.max(1), part % k.max(1));
        out.push(format!("{part}/{k}={q} r {r}"));
        rem = r;
    }
    out
}

/// Digit `i` (ones first), or 0 past the end.
fn digit(d: &[u64], i: usize) -> u64 {
    d.get(i).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn small_cfg(seed: u64) -> SynthConfig {
        SynthConfig {
            seed,
            n_train: 300,
            n_dev: 50,
            n_test: 50,
            ..SynthConfig::default()
        }
    }

    fn all(s: &Splits) -> impl Iterator<Item = &Problem> {
        s.train.iter().chain(s.dev.iter()).chain(s.test.iter())
    }

    fn num(s: &str) -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {s:?}"))
    }

    /// `a op b` for the test's own checks.
    fn eval(a: u64, op: char, b: u64) -> Option<u64> {
        match op {
            '+' => a.checked_add(b),
            '-' => a.checked_sub(b),
            '*' => a.checked_mul(b),
            '/' if b != 0 && a.is_multiple_of(b) => Some(a / b),
            _ => None,
        }
    }

    /// Splits "a op b" on its single operator.
    fn split_binary(e: &str) -> (u64, char, u64) {
        let i = e
            .find(|c| "+-*/".contains(c))
            .unwrap_or_else(|| panic!("no operator in {e:?}"));
        let op = e[i..].chars().next().unwrap();
        (num(&e[..i]), op, num(&e[i + 1..]))
    }

    #[test]
    fn prng_is_pinned() {
        let mut sm = 0u64;
        assert_eq!(splitmix64(&mut sm), 0xE220_A839_7B1D_CDAF);
        let mut r = SynthRng::new(7);
        let a: Vec<u64> = (0..4).map(|_| r.below(1000)).collect();
        let mut r2 = SynthRng::new(7);
        let b: Vec<u64> = (0..4).map(|_| r2.below(1000)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x < 1000));
        assert_eq!(r.range(5, 5), 5);
        assert_eq!(r.range(9, 3), 9);
    }

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

    #[test]
    fn questions_are_well_formed() {
        let s = generate(&small_cfg(8)).unwrap();
        for p in all(&s) {
            let q = &p.question;
            assert_eq!(q.matches('?').count(), 1, "{q}");
            assert!(
                q.ends_with(" have now?") || q.ends_with(" have in the end?"),
                "{q}"
            );
            let first = q.split_whitespace().next().unwrap();
            let name_again = format!("does {first} have");
            assert!(q.contains(&name_again), "name inconsistent: {q}");
            assert!(
                q.starts_with(&format!("{first} has {} ", p.start))
                    || q.starts_with(&format!("{first} starts with {} ", p.start))
            );
            for op in &p.ops {
                assert!(
                    q.contains(&op.operand().to_string())
                        || matches!(op, Op::Div(_) | Op::Mul(2 | 3)),
                    "{q}"
                );
            }
        }
    }

    #[test]
    fn short_annotations_are_correct() {
        let s = generate(&small_cfg(21)).unwrap();
        for p in all(&s) {
            let vals = replay(p.start, &p.ops).unwrap();
            let mut rest = p.short.as_str();
            let mut count = 0;
            while let Some(i) = rest.find("<<") {
                let j = rest[i..].find(">>").expect("closing >>") + i;
                let inner = &rest[i + 2..j];
                let (expr, c) = inner.split_once('=').expect("= in annotation");
                let (a, op, b) = split_binary(expr);
                assert!(!inner.contains(' '), "spaces in {inner}");
                let c = num(c);
                assert_eq!(eval(a, op, b), Some(c), "{inner}");
                assert_eq!(c, vals[count]);
                assert!(rest[j + 2..].starts_with(&c.to_string()));
                count += 1;
                rest = &rest[j + 2..];
            }
            assert_eq!(count, p.ops.len());
            assert!(p.short.ends_with(&format!("\n#### {}", p.answer)));
        }
    }

    /// Re-derives one add/sub column clause; returns (written digit or full value, carry out).
    fn check_add_col(
        c: &str,
        i: usize,
        a: &[u64],
        b: &[u64],
        carry: u64,
        last: bool,
    ) -> (u64, u64) {
        let body = c
            .strip_prefix(&format!("{} ", place_name(i)))
            .expect("place name");
        let (sum_part, write) = match body.split_once(" write ") {
            Some((l, r)) => (l, Some(r)),
            None => (body, None),
        };
        let (lhs, s) = sum_part.split_once('=').unwrap();
        let terms: Vec<u64> = lhs.split('+').map(num).collect();
        let want: Vec<u64> = if carry > 0 {
            vec![digit(a, i), digit(b, i), 1]
        } else {
            vec![digit(a, i), digit(b, i)]
        };
        assert_eq!(terms, want, "{c}");
        let s = num(s);
        assert_eq!(s, terms.iter().sum::<u64>());
        match write {
            Some(w) => {
                assert!(!last && s >= 10, "{c}");
                let (w, k) = w.split_once(" carry ").unwrap();
                assert_eq!((num(w), num(k)), (s % 10, 1));
                (num(w), 1)
            }
            None => {
                assert!(last || s < 10, "{c}");
                (s, 0)
            }
        }
    }

    fn check_sub_col(c: &str, i: usize, a: &[u64], b: &[u64], borrow: u64) -> (u64, u64) {
        let body = c
            .strip_prefix(&format!("{} ", place_name(i)))
            .expect("place name");
        let expr = if borrow > 0 {
            format!("{}-{}-1", digit(a, i), digit(b, i))
        } else {
            format!("{}-{}", digit(a, i), digit(b, i))
        };
        let need = digit(b, i) + borrow;
        match body.split_once(" borrow ") {
            Some((l, r)) => {
                assert_eq!(l, expr);
                assert!(digit(a, i) < need);
                let (e2, d) = r.split_once('=').unwrap();
                assert_eq!(e2, format!("1{expr}"));
                let d = num(d);
                assert_eq!(d + need, digit(a, i) + 10);
                (d, 1)
            }
            None => {
                let (l, d) = body.split_once('=').unwrap();
                assert_eq!(l, expr);
                let d = num(d);
                assert_eq!(d + need, digit(a, i));
                (d, 0)
            }
        }
    }

    fn check_mul_digit(c: &str, d: u64, k: u64, carry: u64, last: bool) -> (u64, u64) {
        let (calc, write) = match c.split_once(" write ") {
            Some((l, r)) => (l, Some(r)),
            None => (c, None),
        };
        let parts: Vec<&str> = calc.split('=').collect();
        assert_eq!(parts[0], format!("{d}*{k}"));
        let p = num(parts[1].split('+').next().unwrap());
        assert_eq!(p, d * k);
        let s = if carry > 0 {
            assert_eq!(parts.len(), 3, "{c}");
            assert_eq!(parts[1], format!("{p}+{carry}"));
            num(parts[2])
        } else {
            assert_eq!(parts.len(), 2, "{c}");
            p
        };
        assert_eq!(s, p + carry);
        match write {
            Some(w) => {
                assert!(!last && s >= 10);
                let (w, k2) = w.split_once(" carry ").unwrap();
                assert_eq!((num(w), num(k2)), (s % 10, s / 10));
                (num(w), s / 10)
            }
            None => {
                assert!(last || s < 10, "{c}");
                (s, 0)
            }
        }
    }

    /// Assembles a number from digits written ones-first, the last entry taken whole.
    fn assemble(written: &[u64]) -> u64 {
        let (last, rest) = written.split_last().unwrap();
        let mut v = *last;
        for &w in rest.iter().rev() {
            v = v * 10 + w;
        }
        v
    }

    /// Independently re-derives a long-form step line and returns its `so N` number.
    fn verify_step(line: &str, a: u64, op: &Op) -> u64 {
        let head = format!("{a} {} {}: ", op.symbol(), op.operand());
        let body = line
            .strip_prefix(&head)
            .unwrap_or_else(|| panic!("{line:?} vs {head:?}"));
        let (work, so) = body.rsplit_once(", so ").expect("so");
        let so = num(so.strip_suffix('.').expect("period"));
        let clauses: Vec<&str> = work.split(", ").collect();
        let da = digits_le(a);
        let derived = match *op {
            Op::Add(b) => {
                let db = digits_le(b);
                assert_eq!(clauses.len(), da.len().max(db.len()));
                let mut carry = 0;
                let mut w = vec![];
                for (i, c) in clauses.iter().enumerate() {
                    let (d, k) = check_add_col(c, i, &da, &db, carry, i + 1 == clauses.len());
                    w.push(d);
                    carry = k;
                }
                assemble(&w)
            }
            Op::Sub(b) => {
                let db = digits_le(b);
                assert_eq!(clauses.len(), da.len());
                let mut borrow = 0;
                let mut w = vec![];
                for (i, c) in clauses.iter().enumerate() {
                    let (d, k) = check_sub_col(c, i, &da, &db, borrow);
                    w.push(d);
                    borrow = k;
                }
                assert_eq!(borrow, 0);
                assemble(&w)
            }
            Op::Mul(k) => {
                assert_eq!(clauses.len(), da.len());
                let mut carry = 0;
                let mut w = vec![];
                for (i, c) in clauses.iter().enumerate() {
                    let (d, cr) = check_mul_digit(c, da[i], k, carry, i + 1 == clauses.len());
                    w.push(d);
                    carry = cr;
                }
                assemble(&w)
            }
            Op::Div(k) => {
                let big: Vec<u64> = da.iter().rev().copied().collect();
                assert_eq!(clauses.len(), big.len());
                let mut rem = 0;
                let mut q_all = 0;
                for (c, &d) in clauses.iter().zip(&big) {
                    let (l, r) = c.split_once('=').unwrap();
                    assert_eq!(l, format!("{}/{k}", rem * 10 + d));
                    let (q, r) = r.split_once(" r ").unwrap();
                    let (q, r) = (num(q), num(r));
                    assert!(r < k && q * k + r == rem * 10 + d, "{c}");
                    q_all = q_all * 10 + q;
                    rem = r;
                }
                assert_eq!(rem, 0);
                q_all
            }
        };
        assert_eq!(derived, so, "{line}");
        so
    }

    fn verify_long(p: &Problem) {
        let vals = replay(p.start, &p.ops).unwrap();
        let lines: Vec<&str> = p.long.lines().collect();
        assert_eq!(lines.len(), p.ops.len() + 3, "{}", p.long);
        let plan: String = p
            .ops
            .iter()
            .map(|o| format!(", then {}{}", o.symbol(), o.operand()))
            .collect();
        assert_eq!(lines[0], format!("Plan: start {}{plan}.", p.start));
        let mut v = p.start;
        for (i, op) in p.ops.iter().enumerate() {
            let got = verify_step(lines[i + 1], v, op);
            assert_eq!(got, vals[i]);
            v = got;
        }
        let check = lines[lines.len() - 2];
        let inner = check
            .strip_prefix("Check: ")
            .unwrap()
            .strip_suffix(". Yes.")
            .unwrap();
        let (lhs, rhs) = inner.split_once(" = ").unwrap();
        let (a, op, b) = split_binary(&lhs.replace(' ', ""));
        assert_eq!(a, v);
        assert_eq!(eval(a, op, b), Some(num(rhs)));
        let before = if p.ops.len() > 1 {
            vals[p.ops.len() - 2]
        } else {
            p.start
        };
        assert_eq!(num(rhs), before);
        assert_eq!(lines[lines.len() - 1], format!("#### {}", p.answer));
    }

    #[test]
    fn long_rationale_arithmetic_is_correct() {
        for seed in [1, 2] {
            let cfg = SynthConfig {
                seed,
                max_steps: 6,
                ..small_cfg(seed)
            };
            let s = generate(&cfg).unwrap();
            all(&s).for_each(verify_long);
        }
        let wide = SynthConfig {
            seed: 9,
            max_value: 99_999,
            max_start: 9_999,
            max_operand: 9_999,
            max_steps: 6,
            ..small_cfg(9)
        };
        all(&generate(&wide).unwrap()).for_each(verify_long);
    }

    #[test]
    fn long_rationale_matches_reference_wording() {
        let ops = [Op::Sub(13), Op::Mul(6), Op::Div(3)];
        let want = "Plan: start 48, then -13, then *6, then /3.\n\
                    48 - 13: ones 8-3=5, tens 4-1=3, so 35.\n\
                    35 * 6: 5*6=30 write 0 carry 3, 3*6=18+3=21, so 210.\n\
                    210 / 3: 2/3=0 r 2, 21/3=7 r 0, 0/3=0 r 0, so 70.\n\
                    Check: 70 * 3 = 210. Yes.\n\
                    #### 70";
        assert_eq!(long_rationale(48, &ops), want);
        assert_eq!(
            add_columns(478, 356).join(", "),
            "ones 8+6=14 write 4 carry 1, tens 7+5+1=13 write 3 carry 1, hundreds 4+3+1=8"
        );
        assert_eq!(
            sub_columns(503, 78).join(", "),
            "ones 3-8 borrow 13-8=5, tens 0-7-1 borrow 10-7-1=2, hundreds 5-0-1=4"
        );
        assert_eq!(
            add_columns(78, 56).join(", "),
            "ones 8+6=14 write 4 carry 1, tens 7+5+1=13"
        );
        assert_eq!(
            short_rationale(48, &ops),
            "Take away 13: 48 - 13 = <<48-13=35>>35.\nMultiply by 6: 35 * 6 = <<35*6=210>>210.\n\
             Divide by 3: 210 / 3 = <<210/3=70>>70.\n#### 70"
        );
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
