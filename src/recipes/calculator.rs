//! Calculator-augmented decoding, the text side.
//!
//! GSM8K rationales carry calculator annotations `<<expr=result>>result`. While
//! decoding, once the text so far (prompt included) ends inside an open
//! annotation whose `=` has been written, the engine forces the correct result
//! followed by `>>`. This module decides *what* to force ([`force_after`]); the
//! token forcing lives elsewhere.
//!
//! The expression evaluator is a small recursive-descent parser with length and
//! depth limits over exact rationals (i128 numerator and denominator): a result is
//! forced only when it is exact, so `123456789*123456789` is forced as
//! 15241578750190521, never as the nearest f64. An overflow forces nothing. Nothing here
//! ever panics on untrusted text.

/// Longest expression (in chars) [`eval_expr`] accepts.
const MAX_EXPR_CHARS: usize = 200;
/// Deepest nesting of parentheses / unary signs [`eval_expr`] accepts.
const MAX_DEPTH: usize = 64;
/// Longest open annotation (bytes after `<<`) [`force_after`] looks back over.
const MAX_LOOKBACK: usize = 256;
/// Distance to the nearest integer under which a result is written as one.
const INT_TOL: f64 = 1e-4;

/// An exact rational `n / d` in lowest terms, `d > 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio {
    pub n: i128,
    pub d: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Ratio {
    /// `n / d` reduced; None for `d == 0` or an overflow.
    fn new(n: i128, d: i128) -> Option<Ratio> {
        if d == 0 {
            return None;
        }
        let g = gcd(n, d).max(1);
        let (n, d) = (n / g, d / g);
        if d < 0 {
            Some(Ratio {
                n: n.checked_neg()?,
                d: d.checked_neg()?,
            })
        } else {
            Some(Ratio { n, d })
        }
    }

    fn add(self, o: Ratio) -> Option<Ratio> {
        let g = gcd(self.d, o.d).max(1);
        let (a, b) = (self.d / g, o.d / g);
        let n = self.n.checked_mul(b)?.checked_add(o.n.checked_mul(a)?)?;
        Ratio::new(n, self.d.checked_mul(b)?)
    }

    fn neg(self) -> Option<Ratio> {
        Some(Ratio {
            n: self.n.checked_neg()?,
            d: self.d,
        })
    }

    fn mul(self, o: Ratio) -> Option<Ratio> {
        // cross-reduce first so that exact products stay in range as long as possible
        let g1 = gcd(self.n, o.d).max(1);
        let g2 = gcd(o.n, self.d).max(1);
        let n = (self.n / g1).checked_mul(o.n / g2)?;
        let d = (self.d / g2).checked_mul(o.d / g1)?;
        Ratio::new(n, d)
    }

    fn div(self, o: Ratio) -> Option<Ratio> {
        if o.n == 0 {
            return None;
        }
        self.mul(Ratio::new(o.d, o.n)?)
    }

    pub fn to_f64(self) -> f64 {
        self.n as f64 / self.d as f64
    }
}

/// `n / d` rounded half away from zero (`d > 0`).
fn round_div(n: i128, d: i128) -> Option<i128> {
    let twice = |x: i128| x.checked_mul(2);
    let q = (twice(n.checked_abs()?)?.checked_add(d)?) / twice(d)?;
    Some(if n < 0 { -q } else { q })
}

/// The exact result as written in an annotation, by the rule of [`format_result`]: an
/// integer when within 1e-4 of one, else rounded to 2 decimals with trailing zeros
/// trimmed. Integer arithmetic throughout; None on an overflow.
pub fn format_exact(r: Ratio) -> Option<String> {
    let nearest = round_div(r.n, r.d)?;
    // |n/d - nearest| <= 1e-4  <=>  |n - nearest d| * 10^4 <= d
    let off = r.n.checked_sub(nearest.checked_mul(r.d)?)?.checked_abs()?;
    if off.checked_mul(10_000)? <= r.d {
        return Some(nearest.to_string());
    }
    let q = round_div(r.n.checked_mul(100)?, r.d)?;
    if q == 0 {
        return Some("0".into());
    }
    let a = q.unsigned_abs();
    let fixed = format!("{}{}.{:02}", if q < 0 { "-" } else { "" }, a / 100, a % 100);
    Some(
        fixed
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
    )
}

/// One lexical token of an arithmetic expression.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Num(Ratio),
    Add,
    Sub,
    Mul,
    Div,
    Open,
    Close,
}

/// Evaluate an arithmetic expression.
///
/// Accepts numbers (plain digits with an optional `.`, e.g. `3`, `2.5`, `.5`;
/// no thousands commas, no exponents), `+ - * /`, `x`, `X`, `×` as
/// multiplication, `÷` as division, unary `-`/`+`, parentheses and whitespace.
/// Returns `None` for empty input, more than 200 chars, nesting deeper than
/// 64, division by zero, unknown characters, trailing garbage or a
/// non-finite result.
pub fn eval_expr(expr: &str) -> Option<f64> {
    eval_exact(expr).map(Ratio::to_f64)
}

/// [`eval_expr`] in exact rational arithmetic; None also when a value leaves i128.
pub fn eval_exact(expr: &str) -> Option<Ratio> {
    if expr.chars().nth(MAX_EXPR_CHARS).is_some() {
        return None;
    }
    let toks = tokenize(expr)?;
    let mut parser = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let value = parser.expr()?;
    (parser.pos == parser.toks.len()).then_some(value)
}

/// The result as written in an annotation: an integer when within 1e-4 of one
/// (no `.0`; `-0` becomes `0`), else rounded to 2 decimals with trailing zeros
/// trimmed (`2.50` -> `2.5`). Non-finite input (never produced by
/// [`eval_expr`]) is written with Rust's `Display` (`NaN`, `inf`).
pub fn format_result(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let r = v.round();
    if (v - r).abs() <= INT_TOL {
        // `+ 0.0` turns -0.0 into +0.0.
        return format!("{:.0}", r + 0.0);
    }
    let fixed = format!("{v:.2}");
    match fixed.trim_end_matches('0').trim_end_matches('.') {
        "-0" => "0".to_string(),
        s => s.to_string(),
    }
}

/// What to force after `text`, if anything.
///
/// `Some(s)` when `text` ends inside an open annotation `<<expr=w`: the last
/// `<<` has no `>>` after it, no newline, and an `=`; `expr` evaluates; and `w`
/// (what follows the first `=`, leading whitespace ignored) is a proper prefix
/// of `result + ">>"`. Then `s` is the rest of `result + ">>"`: all of it for
/// an empty `w`, `">>"` once the full result is written (and `">"` after a
/// single `>`). `None` when the model wrote something else, the expression does
/// not evaluate, or the annotation is open for more than 256 bytes.
///
/// Cost is bounded: only the last ~256 bytes of `text` are examined.
pub fn force_after(text: &str) -> Option<String> {
    let window = tail(text, MAX_LOOKBACK + 2);
    let open = window.rfind("<<")?;
    let inside = &window[open + 2..];
    if inside.contains(">>") || inside.contains('\n') {
        return None;
    }
    let (expr, written) = inside.split_once('=')?;
    let target = format!("{}>>", format_exact(eval_exact(expr)?)?);
    let written = written.trim_start();
    let is_proper_prefix = written.len() < target.len() && target.starts_with(written);
    is_proper_prefix.then(|| target[written.len()..].to_string())
}

/// The last (at most) `max_bytes` bytes of `s`, starting on a char boundary.
fn tail(s: &str, max_bytes: usize) -> &str {
    let mut start = s.len().saturating_sub(max_bytes);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Splits an expression into tokens; `None` on any character outside the grammar.
fn tokenize(expr: &str) -> Option<Vec<Tok>> {
    let mut toks = Vec::new();
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_ascii_digit() || c == '.' {
            let n = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b'.')
                .count();
            toks.push(Tok::Num(parse_plain_number(&rest[..n])?));
            n
        } else {
            if !c.is_whitespace() {
                toks.push(symbol(c)?);
            }
            c.len_utf8()
        };
        rest = &rest[len..];
    }
    Some(toks)
}

/// Digits with at most one `.` and at least one digit, exactly (`2.5` = 25/10).
fn parse_plain_number(s: &str) -> Option<Ratio> {
    let dots = s.bytes().filter(|&b| b == b'.').count();
    if dots > 1 || dots == s.len() {
        return None;
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut n: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        n = n.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    let d = 10i128.checked_pow(frac.len() as u32)?;
    Ratio::new(n, d)
}

/// The operator or parenthesis token for `c`.
fn symbol(c: char) -> Option<Tok> {
    match c {
        '+' => Some(Tok::Add),
        '-' | '−' => Some(Tok::Sub),
        '*' | 'x' | 'X' | '×' => Some(Tok::Mul),
        '/' | '÷' => Some(Tok::Div),
        '(' => Some(Tok::Open),
        ')' => Some(Tok::Close),
        _ => None,
    }
}

/// Applies a binary operator; `None` on division by zero or an overflow.
fn apply(op: Tok, a: Ratio, b: Ratio) -> Option<Ratio> {
    match op {
        Tok::Add => a.add(b),
        Tok::Sub => a.add(b.neg()?),
        Tok::Mul => a.mul(b),
        Tok::Div => a.div(b),
        _ => None,
    }
}

/// Recursive-descent parser over a token list.
///
/// Grammar: `expr := term (('+'|'-') term)*`, `term := unary (('*'|'/') unary)*`,
/// `unary := ('-'|'+') unary | primary`, `primary := NUM | '(' expr ')'`.
struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    /// The current token, if any.
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).copied()
    }

    /// Consumes the current token if it is one of `ops`.
    fn take_op(&mut self, ops: [Tok; 2]) -> Option<Tok> {
        let tok = self.peek().filter(|t| ops.contains(t))?;
        self.pos += 1;
        Some(tok)
    }

    /// `term (('+'|'-') term)*`
    fn expr(&mut self) -> Option<Ratio> {
        let mut acc = self.term()?;
        while let Some(op) = self.take_op([Tok::Add, Tok::Sub]) {
            acc = apply(op, acc, self.term()?)?;
        }
        Some(acc)
    }

    /// `unary (('*'|'/') unary)*`
    fn term(&mut self) -> Option<Ratio> {
        let mut acc = self.unary()?;
        while let Some(op) = self.take_op([Tok::Mul, Tok::Div]) {
            acc = apply(op, acc, self.unary()?)?;
        }
        Some(acc)
    }

    /// `('-'|'+') unary | primary`, counting nesting depth.
    fn unary(&mut self) -> Option<Ratio> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let value = match self.take_op([Tok::Sub, Tok::Add]) {
            Some(Tok::Sub) => self.unary().and_then(Ratio::neg),
            Some(_) => self.unary(),
            None => self.primary(),
        };
        self.depth -= 1;
        value
    }

    /// `NUM | '(' expr ')'`
    fn primary(&mut self) -> Option<Ratio> {
        let tok = self.peek()?;
        self.pos += 1;
        match tok {
            Tok::Num(v) => Some(v),
            Tok::Open => {
                let v = self.expr()?;
                if self.peek()? != Tok::Close {
                    return None;
                }
                self.pos += 1;
                Some(v)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (expression, expected value)
    const EVAL_CASES: &[(&str, Option<f64>)] = &[
        ("48/2", Some(24.0)),
        ("(3+4)*2", Some(14.0)),
        ("2*-3", Some(-6.0)),
        ("3 x 4", Some(12.0)),
        ("3×4", Some(12.0)),
        ("12÷4", Some(3.0)),
        ("1/3", Some(1.0 / 3.0)),
        ("7/2", Some(3.5)),
        ("-(2+3)", Some(-5.0)),
        ("--4", Some(4.0)),
        ("+4", Some(4.0)),
        (".5*10", Some(5.0)),
        ("  2 + 3 * 4 - 6 / 2 ", Some(11.0)),
        ("10-2-3", Some(5.0)),
        ("64/4/2", Some(8.0)),
        ("1.25*4", Some(5.0)),
        ("10/0", None),
        ("10/(5-5)", None),
        ("2+", None),
        ("", None),
        ("   ", None),
        ("(((", None),
        ("(1+2", None),
        ("1+2)", None),
        ("2 3", None),
        ("1,000*2", None),
        ("1.2.3", None),
        (".", None),
        ("2x", None),
        ("5$", None),
        ("3^2", None),
    ];

    /// (text, expected forcing)
    const FORCE_CASES: &[(&str, Option<&str>)] = &[
        ("Natalia sold <<48/2=", Some("24>>")),
        ("Natalia sold 48/2 = <<48/2=2", Some("4>>")),
        ("<<48/2=24", Some(">>")),
        ("<<48/2=24>", Some(">")),
        ("<<48/2= ", Some("24>>")),
        ("<<48/2= 2", Some("4>>")),
        ("<<48/2=3", None),
        ("<<48/2=240", None),
        ("<<48/2=24 ", None),
        ("<<48/2=24>>24 and <<3+4", None),
        ("<<1+1=2>>2 then", None),
        ("<<1+1=2>>", None),
        ("no annotation here", None),
        ("", None),
        ("<<", None),
        ("<<=", None),
        ("<<foo=", None),
        ("<<10/0=", None),
        ("<<7/2=", Some("3.5>>")),
        ("<<1/3=0.3", Some("3>>")),
        ("<<2*-3=-", Some("6>>")),
        ("<<5-5=", Some("0>>")),
        ("<<1+1=\n", None),
        ("<<1+1\n=", None),
        ("She had <<3*4=12>>12 apples, then ate <<12-5=", Some("7>>")),
        // A prompt that ends inside an open annotation is completed.
        (
            "Question: Tom has 5 bags of 3.\nAnswer: He has 5*3 = <<5*3=",
            Some("15>>"),
        ),
        // Multi-byte characters around and inside.
        ("Prix: 3 € × 4 → <<3×4=", Some("12>>")),
        ("日本語のテキスト <<6÷2=3", Some(">>")),
        ("<<2+2=4>>4 ünïcödé", None),
    ];

    #[test]
    fn eval_table() {
        for &(expr, want) in EVAL_CASES {
            let got = eval_expr(expr);
            let ok = match (got, want) {
                (Some(g), Some(w)) => (g - w).abs() < 1e-12,
                (g, w) => g.is_none() && w.is_none(),
            };
            assert!(ok, "eval_expr({expr:?}) = {got:?}, want {want:?}");
        }
    }

    #[test]
    fn eval_limits() {
        let deep = "(".repeat(100) + "1" + &")".repeat(100);
        assert_eq!(eval_expr(&deep), None);
        let shallow = "(".repeat(10) + "1" + &")".repeat(10);
        assert_eq!(eval_expr(&shallow), Some(1.0));
        assert_eq!(eval_expr(&"-".repeat(100).to_string()), None);
        assert_eq!(eval_expr(&("1+".repeat(100) + "1")), None); // 201 chars
        assert_eq!(eval_expr(&("1+".repeat(99) + "1")), Some(100.0));
        assert_eq!(eval_expr(&"(".repeat(10_000)), None);
    }

    #[test]
    fn format_table() {
        let cases: &[(f64, &str)] = &[
            (24.0, "24"),
            (24.00001, "24"),
            (23.99999, "24"),
            (-0.0, "0"),
            (-0.00001, "0"),
            (-0.001, "0"),
            (2.5, "2.5"),
            (1.0 / 3.0, "0.33"),
            (2.0 / 3.0, "0.67"),
            (3.5, "3.5"),
            (-6.0, "-6"),
            (-2.25, "-2.25"),
            (2.999, "3"),
            (1e20, "100000000000000000000"),
        ];
        for &(v, want) in cases {
            assert_eq!(format_result(v), want, "format_result({v})");
        }
        assert_eq!(format_result(eval_expr("1/3").unwrap_or(f64::NAN)), "0.33");
        assert_eq!(format_result(f64::NAN), "NaN");
    }

    #[test]
    fn exact_past_two_to_the_53() {
        // 123456789^2 = 15241578750190521; the nearest f64 ends in ...520
        assert_eq!(
            force_after("<<123456789*123456789=").as_deref(),
            Some("15241578750190521>>")
        );
        assert_eq!(
            force_after("<<99999999999999999*3=").as_deref(),
            Some("299999999999999997>>")
        );
        // a result outside i128 is not forced at all, rather than forced wrong
        let huge = "99999999999999999999".to_string() + &"*99999999999999999999".repeat(3);
        assert_eq!(force_after(&format!("<<{huge}=")), None);
        assert_eq!(
            format_exact(eval_exact("1/3").unwrap()).as_deref(),
            Some("0.33")
        );
        assert_eq!(
            format_exact(eval_exact("-7/2").unwrap()).as_deref(),
            Some("-3.5")
        );
        assert_eq!(
            format_exact(eval_exact("-1/1000").unwrap()).as_deref(),
            Some("0")
        );
        assert_eq!(
            format_exact(eval_exact("0.1+0.2").unwrap()).as_deref(),
            Some("0.3")
        );
        assert_eq!(
            format_exact(eval_exact("2/3").unwrap()).as_deref(),
            Some("0.67")
        );
        assert_eq!(
            format_exact(eval_exact("100000/3").unwrap()).as_deref(),
            Some("33333.33")
        );
    }

    #[test]
    fn force_table() {
        for &(text, want) in FORCE_CASES {
            assert_eq!(force_after(text).as_deref(), want, "force_after({text:?})");
        }
    }

    #[test]
    fn force_lookback_is_bounded() {
        let long_expr = "1+".repeat(200) + "1";
        assert_eq!(force_after(&format!("<<{long_expr}=")), None);
        let long_prefix = "é".repeat(10_000) + "<<2+2=";
        assert_eq!(force_after(&long_prefix).as_deref(), Some("4>>"));
        // Multi-byte padding where the window cut falls inside a character.
        assert_eq!(
            force_after(&("€".repeat(500) + "<<1+1=")).as_deref(),
            Some("2>>")
        );
        // An annotation open for longer than the look-back bound is ignored.
        let straddle = format!("<<1 {}+1=", " ".repeat(MAX_LOOKBACK));
        assert_eq!(force_after(&straddle), None);
    }

    /// Minimal xorshift64 generator for the no-panic sweep.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    const FRAGMENTS: &[&str] = &[
        "<<", ">>", "<", ">", "=", "0", "1", "4", "9", ".", ",", "+", "-", "*", "/", "x", "×", "÷",
        "(", ")", " ", "\n", "é", "€", "日", "a", "<<48/2=", "24", ">>24",
    ];

    fn random_text(state: &mut u64) -> String {
        let len = (xorshift(state) % 30) as usize;
        (0..len)
            .map(|_| FRAGMENTS[(xorshift(state) % FRAGMENTS.len() as u64) as usize])
            .collect()
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        for _ in 0..5000 {
            let text = random_text(&mut state);
            if let Some(forced) = force_after(&text) {
                assert!(forced.ends_with('>') && !forced.is_empty());
            }
            if let Some(v) = eval_expr(&text) {
                assert!(v.is_finite());
                let _ = format_result(v);
            }
            let _ = format_result(f64::from_bits(xorshift(&mut state)));
        }
    }
}
