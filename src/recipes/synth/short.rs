//! The short rationale: one GSM8K-style line per step, each with a calculator annotation.

use super::Op;

/// The GSM8K-style rationale: one line per step, e.g.
/// `Take away 13: 48 - 13 = <<48-13=35>>35.`, then `#### 35`.
///
/// The ops should be legal from `start` (see [`replay`](super::replay)); at the first step that is not,
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

#[cfg(test)]
mod tests {
    use crate::recipes::synth::test_support::{all, eval, num, small_cfg, split_binary};
    use crate::recipes::synth::{generate, replay};

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
}
