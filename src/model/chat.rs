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

type Toks<'a> = Vec<(minijinja::machinery::Token<'a>, u16)>;

/// The template's tokens with their lines; None when it does not tokenize (the parser
/// then reports the syntax error with better context).
fn tokens(template: &str) -> Option<Toks<'_>> {
    use minijinja::machinery::{tokenize, WhitespaceConfig};
    let ws = WhitespaceConfig::default();
    tokenize(template, false, Default::default(), ws)
        .map(|t| t.ok().map(|(tok, span)| (tok, span.start_line)))
        .collect()
}

/// One `set` statement: its line, its target paths, the token range of its value, and
/// whether it is the block form (`{% set x %}body{% endset %}`, a rendered string).
struct SetStmt {
    line: u16,
    targets: Vec<String>,
    value: std::ops::Range<usize>,
    block: bool,
}

fn set_statements(toks: &Toks<'_>) -> Vec<SetStmt> {
    use minijinja::machinery::Token;
    let is_set = |i: usize| {
        matches!(toks[i].0, Token::BlockStart)
            && matches!(toks.get(i + 1).map(|t| &t.0), Some(Token::Ident("set")))
    };
    let mut sets = Vec::new();
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
            if let Some((p, next)) = name_path(toks, j) {
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
        let block = !matches!(toks[j].0, Token::Assign);
        let end = if !block {
            (start..toks.len())
                .find(|&k| matches!(toks[k].0, Token::BlockEnd))
                .unwrap_or(toks.len())
        } else {
            (start..toks.len())
                .find(|&k| {
                    matches!(toks[k].0, Token::BlockStart)
                        && matches!(toks.get(k + 1).map(|t| &t.0), Some(Token::Ident("endset")))
                })
                .unwrap_or(toks.len())
        };
        sets.push(SetStmt {
            line,
            targets,
            value: start..end,
            block,
        });
        i = end;
    }
    sets
}

/// The variable paths a token range reads (an attribute name after a dot is not a
/// variable), each with the token that follows it.
fn read_paths<'t>(
    toks: &'t Toks<'_>,
    range: std::ops::Range<usize>,
) -> Vec<(String, Option<&'t minijinja::machinery::Token<'t>>)> {
    use minijinja::machinery::Token;
    let mut out = Vec::new();
    let mut k = range.start;
    while k < range.end {
        let after_dot = k > 0 && matches!(toks[k - 1].0, Token::Dot);
        match name_path(toks, k) {
            Some((p, next)) if !after_dot => {
                out.push((p, toks.get(next).map(|t| &t.0)));
                k = next;
            }
            _ => k += 1,
        }
    }
    out
}

/// Refuse a template that builds a variable from two copies of a variable it assigns,
/// as in `{% set s = s ~ s %}` inside a loop. Fuel counts instructions, not bytes, so
/// sixty such steps would ask for 2^60 bytes; minijinja has no memory limit to stop
/// that. Real chat templates append to a variable (`ns.text = ns.text + piece`), which
/// grows linearly under the fuel budget and passes. This is a static check on the
/// token stream: a string doubled through a macro's output is not caught here.
fn check_doubling(template: &str) -> Result<()> {
    let Some(toks) = tokens(template) else {
        return Ok(());
    };
    let sets = set_statements(&toks);
    let assigned: std::collections::HashSet<&str> = sets
        .iter()
        .flat_map(|s| s.targets.iter().map(String::as_str))
        .collect();
    // a variable set from an assigned one stands for it (`{% set t = ns.s %}` then
    // `{% set ns.s = ns.s ~ t %}` doubles too)
    let mut alias: std::collections::HashMap<String, Vec<String>> = Default::default();
    for s in sets.iter().filter(|s| !s.block && s.targets.len() == 1) {
        // only a value that is one path and nothing else: a copy, not a computation
        if let Some((p, next)) = name_path(&toks, s.value.start) {
            if next == s.value.end && assigned.contains(p.as_str()) && p != s.targets[0] {
                alias.entry(s.targets[0].clone()).or_default().push(p);
            }
        }
    }
    for s in &sets {
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let reads = read_paths(&toks, s.value.clone())
            .into_iter()
            .flat_map(|(p, _)| {
                let mut v = vec![p.clone()];
                v.extend(alias.get(&p).cloned().unwrap_or_default());
                v
            });
        for p in reads {
            if assigned.contains(p.as_str()) {
                let n = seen.entry(p.clone()).or_default();
                *n += 1;
                if *n == 2 {
                    return Err(Error::invalid(
                        "chat",
                        format!(
                            "chat_template line {}: a `set` uses `{p}` twice; a \
                             template that doubles a string can grow without bound, \
                             so ponder refuses it",
                            s.line
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Refuse a template that could store a namespace inside a namespace. Printing,
/// comparing or serialising a namespace that holds itself (`{% set ns.x = ns %}{{ ns }}`)
/// recurses without end in minijinja and aborts the process on a stack overflow, which
/// no fuel or recursion limit catches. Only `{% set ns.attr = value %}` can make such a
/// cycle, so every such value is checked statically:
/// - `namespace(...)` inside it is refused (a namespace in a namespace);
/// - a variable bound to `namespace(...)` (a *namespace*) may be read through an
///   attribute (`ns.count + 1`: attributes never hold namespaces, by this very rule) but
///   not whole (`ns`, `ns|default(x)`, `[ns]`);
/// - a variable that may hold a namespace inside a value (a *holder*: set from an
///   expression that reads a namespace or holder whole, a loop over one, a macro argument
///   given one, or a namespace built with one) may not be read at all.
///
/// Real chat templates store strings, booleans, numbers and message fields in their
/// namespaces and pass this check.
fn check_namespace_cycles(template: &str) -> Result<()> {
    use minijinja::machinery::Token;
    use std::collections::HashSet;
    let Some(toks) = tokens(template) else {
        return Ok(());
    };
    if !toks
        .iter()
        .any(|t| matches!(t.0, Token::Ident("namespace")))
    {
        return Ok(());
    }
    // `namespace` itself passed around (`{% set mk = namespace %}`) would make namespaces
    // under another name: only calls are accepted
    if let Some(k) = (0..toks.len()).find(|&k| {
        matches!(toks[k].0, Token::Ident("namespace"))
            && !matches!(toks.get(k + 1).map(|t| &t.0), Some(Token::ParenOpen))
            && !(k > 0 && matches!(toks[k - 1].0, Token::Dot))
    }) {
        return Err(Error::invalid(
            "chat",
            format!(
                "chat_template line {}: `namespace` is used other than as a call; ponder \
                 accepts only `namespace(...)`",
                toks[k].1
            ),
        ));
    }
    let sets = set_statements(&toks);
    let calls_namespace = |r: &std::ops::Range<usize>| {
        (r.start..r.end).any(|k| {
            matches!(toks[k].0, Token::Ident("namespace"))
                && matches!(toks.get(k + 1).map(|t| &t.0), Some(Token::ParenOpen))
        })
    };
    // `{% for a, b in expr %}` and `{% macro m(p, q) %}` headers
    let mut loops: Vec<(Vec<String>, std::ops::Range<usize>)> = Vec::new();
    let mut macros: Vec<(String, Vec<String>)> = Vec::new();
    for i in 0..toks.len() {
        if !matches!(toks[i].0, Token::BlockStart) {
            continue;
        }
        let end = (i..toks.len())
            .find(|&k| matches!(toks[k].0, Token::BlockEnd))
            .unwrap_or(toks.len());
        match toks.get(i + 1).map(|t| &t.0) {
            Some(Token::Ident("for")) => {
                let inn = (i + 2..end).find(|&k| matches!(toks[k].0, Token::Ident("in")));
                if let Some(inn) = inn {
                    let vars = (i + 2..inn)
                        .filter_map(|k| match toks[k].0 {
                            Token::Ident(v) => Some(v.to_string()),
                            _ => None,
                        })
                        .collect();
                    loops.push((vars, inn + 1..end));
                }
            }
            Some(Token::Ident("with")) => {
                // `{% with a = expr, b = expr %}`: every name bound, from the whole header
                let vars = (i + 2..end)
                    .filter(|&k| matches!(toks.get(k + 1).map(|t| &t.0), Some(Token::Assign)))
                    .filter_map(|k| match toks[k].0 {
                        Token::Ident(v) => Some(v.to_string()),
                        _ => None,
                    })
                    .collect();
                loops.push((vars, i + 2..end));
            }
            Some(Token::Ident("macro")) => {
                if let Some(Token::Ident(name)) = toks.get(i + 2).map(|t| &t.0) {
                    let params = (i + 3..end)
                        .filter(|&k| matches!(toks[k - 1].0, Token::ParenOpen | Token::Comma))
                        .filter_map(|k| match toks[k].0 {
                            Token::Ident(v) => Some(v.to_string()),
                            _ => None,
                        })
                        .collect();
                    macros.push((name.to_string(), params));
                }
            }
            _ => {}
        }
    }
    let root = |p: &str| p.split('.').next().unwrap_or(p).to_string();
    let mut namespaces: HashSet<String> = HashSet::new();
    let mut holders: HashSet<String> = HashSet::new();
    // whether a token range reads a namespace whole, or a holder at all
    let taints = |r: std::ops::Range<usize>, ns: &HashSet<String>, h: &HashSet<String>| {
        read_paths(&toks, r).iter().any(|(p, next)| {
            let whole = !p.contains('.') && !matches!(next, Some(Token::BracketOpen));
            h.contains(&root(p)) || (whole && ns.contains(p))
        })
    };
    loop {
        let before = (namespaces.len(), holders.len());
        for s in sets.iter().filter(|s| !s.block) {
            let plain: Vec<&String> = s.targets.iter().filter(|t| !t.contains('.')).collect();
            let tainted = taints(s.value.clone(), &namespaces, &holders);
            for t in plain {
                if tainted {
                    holders.insert(t.clone());
                } else if calls_namespace(&s.value) {
                    namespaces.insert(t.clone());
                }
            }
        }
        for (vars, r) in &loops {
            if taints(r.clone(), &namespaces, &holders) || calls_namespace(r) {
                holders.extend(vars.iter().cloned());
            }
        }
        for (name, params) in &macros {
            let mut k = 0;
            while k + 1 < toks.len() {
                if matches!(toks[k].0, Token::Ident(n) if n == name)
                    && matches!(toks[k + 1].0, Token::ParenOpen)
                {
                    let close = (k + 1..toks.len())
                        .find(|&j| {
                            matches!(
                                toks[j].0,
                                Token::ParenClose | Token::BlockEnd | Token::VariableEnd
                            )
                        })
                        .unwrap_or(toks.len());
                    if taints(k + 2..close, &namespaces, &holders)
                        || calls_namespace(&(k + 2..close))
                    {
                        holders.extend(params.iter().cloned());
                    }
                    k = close;
                } else {
                    k += 1;
                }
            }
        }
        if (namespaces.len(), holders.len()) == before {
            break;
        }
    }
    for s in sets.iter().filter(|s| !s.block) {
        if !s.targets.iter().any(|t| t.contains('.')) {
            continue;
        }
        if calls_namespace(&s.value) || taints(s.value.clone(), &namespaces, &holders) {
            return Err(Error::invalid(
                "chat",
                format!(
                    "chat_template line {}: `set {}` may store a namespace inside a \
                     namespace; printing such a value recurses without end, so ponder \
                     refuses the template",
                    s.line,
                    s.targets.join(", ")
                ),
            ));
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
    check_namespace_cycles(template)?;
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
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set t = ns.s %}{% set ns.s = ns.s ~ t %}{% endfor %}",
        ] {
            let err = render(t, &[], false, None, None).unwrap_err().to_string();
            assert!(err.contains("twice"), "{t}: {err}");
        }
    }

    #[test]
    fn a_namespace_stored_in_a_namespace_is_refused_before_rendering() {
        // each would overflow the stack when printed, compared or serialised
        for t in [
            "{% set ns = namespace() %}{% set ns.x = ns %}{{ ns }}",
            "{% set ns = namespace() %}{% set ns.x = [ns] %}{{ ns }}",
            "{% set ns = namespace() %}{% set ns.x = {'a': ns} %}{{ ns }}",
            "{% set ns = namespace() %}{% set ns.x = ns|default(1) %}{{ ns }}",
            "{% set a = namespace() %}{% set b = namespace() %}{% set a.x = b %}{% set b.x = a %}{{ a }}",
            "{% set ns = namespace() %}{% set l = [ns] %}{% set ns.x = l[0] %}{{ ns }}",
            "{% set ns = namespace() %}{% set ns.x = namespace(y=ns) %}{{ ns }}",
            "{% set ns = namespace() %}{% set b = namespace(y=ns) %}{% set ns.x = b.y %}{{ ns }}",
            "{% set ns = namespace() %}{% for n in [ns] %}{% set ns.x = n %}{% endfor %}{{ ns }}",
            "{% macro m(a) %}{% set a.x = a %}{% endmacro %}{% set ns = namespace() %}{{ m(ns) }}{{ ns }}",
            "{% for n in [namespace()] %}{% set n.x = n %}{{ n }}{% endfor %}",
            "{% macro m(a) %}{% set a.x = a %}{{ a }}{% endmacro %}{{ m(namespace()) }}",
            "{% set ns = namespace() %}{% with a = ns %}{% set ns.x = a %}{% endwith %}{{ ns }}",
        ] {
            let err = render(t, &[], false, None, None).unwrap_err().to_string();
            assert!(err.contains("namespace inside a"), "{t}: {err}");
        }
    }

    #[test]
    fn namespace_only_as_a_call() {
        let t = "{% set mk = namespace %}{% set ns = mk() %}{% set ns.x = ns %}{{ ns }}";
        let err = render(t, &[], false, None, None).unwrap_err().to_string();
        assert!(err.contains("only `namespace(...)`"), "{err}");
    }

    #[test]
    fn namespace_idioms_of_real_templates_pass() {
        let t = "{%- set ns = namespace(is_first=false, is_tool=false, prev='', n=0, sys='') %}\
            {%- for message in messages %}\
            {%- set ns.n = ns.n + 1 %}\
            {%- set ns.prev = message['role'] %}\
            {%- set ns.sys = message.content %}\
            {%- set ns.is_tool = message.role == 'tool' %}\
            {%- set ns.is_first = true %}\
            {%- endfor %}{{ ns.n }}{{ ns.prev }}{{ ns.sys }}";
        let out = render(t, &[Message::new("user", "hi")], true, None, None).unwrap();
        assert_eq!(out, "1userhi");
    }
}
