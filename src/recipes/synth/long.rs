//! The long rationale: a plan, each step worked digit by digit (column addition and
//! subtraction with carries and borrows, single-digit multiplication, long division), a
//! check of the last step by its inverse, then the answer.

use super::Op;

/// The digit-level chain of thought: plan, worked steps, inverse check, `#### answer`.
///
/// The ops should be legal from `start` (see [`replay`](super::replay)); at the first step that is not,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipes::synth::test_support::{all, eval, num, small_cfg, split_binary};
    use crate::recipes::synth::{generate, replay, short_rationale, Problem, SynthConfig};

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
}
