//! Chat templates: Jinja rendered with minijinja, with Hugging Face's semantics: the
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`; blocks trimmed
//! (`trim_blocks`, `lstrip_blocks`); `raise_exception`; Python string methods (`strip`,
//! `startswith`, ...); and a `tojson` that writes JSON as Python's json.dumps does.

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One chat message. Extra fields (tool_calls, name, ...) pass through to the template.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: serde_json::Value,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: serde_json::Value::String(content.into()),
            extra: Default::default(),
        }
    }
}

/// JSON as Python's json.dumps(x, ensure_ascii=False) writes it: ", " and ": " separators.
fn py_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as V;
    let nl = |out: &mut String, lvl: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * lvl));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        V::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_json(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push(']');
        }
        V::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                py_json(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

fn tojson(v: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if indent.is_some_and(|i| i > MAX_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: indent {} is over {MAX_INDENT}",
                indent.unwrap_or(0)
            ),
        ));
    }
    let json = serde_json::to_value(&v)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    py_json(&json, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

/// The sandbox a chat template runs in. Templates come with downloaded models, so they
/// are bounded: an instruction budget (minijinja's fuel: a nested loop cannot spin for
/// ever), a recursion limit well inside a test thread's stack, a bounded `tojson`
/// indent, a cap on the rendered text, and a static refusal of string doubling
/// (`check_doubling`).
const TEMPLATE_FUEL: u64 = 5_000_000;
const TEMPLATE_RECURSION: usize = 64;
const MAX_INDENT: usize = 64;
const MAX_RENDERED: usize = 4 << 20;

/// A writer that refuses to grow past `MAX_RENDERED` bytes.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED {
            return Err(std::io::Error::other(format!(
                "the rendered chat is over {} MiB",
                MAX_RENDERED >> 20
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<JValue, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> String {
        strftime_now(&fmt)
    });
    env.add_filter("tojson", tojson);
    env
}

/// The few strftime directives chat templates use (Llama 3.1 writes "%d %b %Y").
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const FULL: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    fmt.replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%b", MONTHS[(m - 1) as usize])
        .replace("%B", FULL[(m - 1) as usize])
}

/// A name path in a template expression: `s`, `ns.text` or `ns['text']`, with the token
/// index just past it.
fn name_path(toks: &[(minijinja::machinery::Token<'_>, u16)], i: usize) -> Option<(String, usize)> {
    use minijinja::machinery::Token;
    let Token::Ident(first) = &toks[i].0 else {
        return None;
    };
    let mut path = first.to_string();
    let mut j = i + 1;
    loop {
        match (toks.get(j).map(|t| &t.0), toks.get(j + 1).map(|t| &t.0)) {
            (Some(Token::Dot), Some(Token::Ident(a))) => {
                path.push('.');
                path.push_str(a);
                j += 2;
            }
            (Some(Token::BracketOpen), Some(Token::Str(a)))
                if matches!(toks.get(j + 2).map(|t| &t.0), Some(Token::BracketClose)) =>
            {
                path.push('.');
                path.push_str(a);
                j += 3;
            }
            _ => return Some((path, j)),
        }
    }
}

/// Refuse a template that builds a variable from two copies of a variable it assigns,
/// as in `{% set s = s ~ s %}` inside a loop. Fuel counts instructions, not bytes, so
/// sixty such steps would ask for 2^60 bytes; minijinja has no memory limit to stop
/// that. Real chat templates append to a variable (`ns.text = ns.text + piece`), which
/// grows linearly under the fuel budget and passes. This is a static check on the
/// token stream: a string doubled through a macro's output is not caught here.
fn check_doubling(template: &str) -> Result<()> {
    use minijinja::machinery::{tokenize, Token, WhitespaceConfig};
    let ws = WhitespaceConfig::default();
    let mut toks = Vec::new();
    for t in tokenize(template, false, Default::default(), ws) {
        match t {
            Ok((tok, span)) => toks.push((tok, span.start_line)),
            // The parser reports syntax errors with better context.
            Err(_) => return Ok(()),
        }
    }
    let is_set = |i: usize| {
        matches!(toks[i].0, Token::BlockStart)
            && matches!(toks.get(i + 1).map(|t| &t.0), Some(Token::Ident("set")))
    };
    // Each set statement: (line, target paths, token range of its value).
    let mut sets: Vec<(u16, Vec<String>, std::ops::Range<usize>)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if !is_set(i) {
            i += 1;
            continue;
        }
        let line = toks[i].1;
        let mut j = i + 2;
        let mut targets = Vec::new();
        while j < toks.len() && !matches!(toks[j].0, Token::Assign | Token::BlockEnd) {
            if let Some((p, next)) = name_path(&toks, j) {
                targets.push(p);
                j = next;
            } else {
                j += 1;
            }
        }
        if j >= toks.len() {
            break;
        }
        let start = j + 1;
        let end = if matches!(toks[j].0, Token::Assign) {
            (start..toks.len())
                .find(|&k| matches!(toks[k].0, Token::BlockEnd))
                .unwrap_or(toks.len())
        } else {
            // `{% set s %}body{% endset %}`: the body is the value.
            (start..toks.len())
                .find(|&k| {
                    matches!(toks[k].0, Token::BlockStart)
                        && matches!(toks.get(k + 1).map(|t| &t.0), Some(Token::Ident("endset")))
                })
                .unwrap_or(toks.len())
        };
        sets.push((line, targets, start..end));
        i = end;
    }
    let assigned: std::collections::HashSet<&str> = sets
        .iter()
        .flat_map(|(_, t, _)| t.iter().map(String::as_str))
        .collect();
    for (line, _, range) in &sets {
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let mut k = range.start;
        while k < range.end {
            // An attribute or method name after a dot is not a variable.
            let after_dot = k > 0 && matches!(toks[k - 1].0, Token::Dot);
            match name_path(&toks, k) {
                Some((p, next)) if !after_dot => {
                    if assigned.contains(p.as_str()) {
                        let n = seen.entry(p.clone()).or_default();
                        *n += 1;
                        if *n == 2 {
                            return Err(Error::invalid(
                                "chat",
                                format!(
                                    "chat_template line {line}: a `set` uses `{p}` twice; a \
                                     template that doubles a string can grow without bound, \
                                     so ponder refuses it"
                                ),
                            ));
                        }
                    }
                    k = next;
                }
                _ => k += 1,
            }
        }
    }
    Ok(())
}

/// Render `template` for `messages`.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<String> {
    check_doubling(template)?;
    let env = environment();
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| Error::invalid("chat", format!("chat_template does not parse: {e}")))?;
    let ctx = minijinja::context! {
        messages => JValue::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos.unwrap_or(""),
        eos_token => eos.unwrap_or(""),
    };
    let mut out = Capped(Vec::new());
    tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
        let mut msg = format!("chat_template failed: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        Error::invalid("chat", msg)
    })?;
    String::from_utf8(out.0)
        .map_err(|_| Error::invalid("chat", "chat_template rendered invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_idioms_of_real_templates_pass_the_doubling_check() {
        // Shapes taken from Qwen3, DeepSeek-R1 and Llama 3.1 templates: each appends to
        // or rewrites a variable from one copy of itself.
        let t = "{%- set ns = namespace(system_prompt='', last=messages|length - 1) %}\
            {%- for message in messages %}\
            {%- set index = (messages|length - 1) - loop.index0 %}\
            {%- set ns.last = index %}\
            {%- set content = message['content'] %}\
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}\
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\
            {%- set ns.system_prompt = ns.system_prompt + '\\n\\n' + content %}\
            {{- content }}{%- endfor %}{{ ns.system_prompt|length }}";
        let out = render(t, &[Message::new("user", "a</think>b")], true, None, None).unwrap();
        assert_eq!(out, "b3");
    }

    #[test]
    fn doubling_is_refused_before_rendering() {
        for t in [
            "{% set s = 'x' %}{% set s = s ~ s %}",
            "{% set ns = namespace(t='x') %}{% set ns.t = ns['t'] + ns.t %}",
            "{% set s = 'x' %}{% set t = s + s %}",
        ] {
            let err = render(t, &[], false, None, None).unwrap_err().to_string();
            assert!(err.contains("twice"), "{t}: {err}");
        }
    }
}
