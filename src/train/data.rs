//! Training data in the JSONL formats TRL users already have.
//!
//! - SFT: `{"prompt": ..., "completion": ...}` or `{"messages": [...]}` (the last
//!   message, which must be the assistant's, is the completion; the rest is the prompt).
//! - Preference: `{"prompt": ..., "chosen": ..., "rejected": ...}`.
//!
//! Each field is a plain string or a conversation (a list of `{"role", "content"}`).
//! Conversations are rendered through the chat template: the prompt with the generation
//! prompt, each completion as the rest of the rendered full conversation.
//!
//! Tokenisation follows TRL: prompt and completion tokenised separately without special
//! tokens; a BOS in front only when the tokenizer has one and the prompt does not already
//! start with it; the EOS appended to every completion; loss and log-probs over the
//! completion tokens only (EOS included). Truncation is explicit and counted.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::chat::Message;
use crate::model::Tok;

/// One token sequence: `ids[..prompt_len]` is the prompt, the rest the completion.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seq {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl Seq {
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    pub chosen: Seq,
    pub rejected: Seq,
}

/// Which end of an over-long sequence survives `--max-length` (TRL's truncation_mode).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    KeepStart,
    KeepEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Truncation {
    /// Keep the last `max_prompt_length` prompt tokens.
    pub max_prompt_length: Option<usize>,
    /// Bound on prompt + completion.
    pub max_length: Option<usize>,
    pub mode: TruncationMode,
}

/// What loading did to the data.
#[derive(Clone, Debug, Default)]
pub struct DataStats {
    pub examples: usize,
    /// Examples with at least one sequence shortened.
    pub truncated: usize,
    /// Examples left with no completion token after truncation (not trained on).
    pub dropped: usize,
}

impl std::fmt::Display for DataStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} examples, {} truncated",
            self.examples, self.truncated
        )?;
        if self.dropped > 0 {
            write!(
                f,
                ", {} dropped (no completion token left after truncation)",
                self.dropped
            )?;
        }
        Ok(())
    }
}

/// A field as text or as a conversation.
enum Field {
    Text(String),
    Chat(Vec<Message>),
}

fn err(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    let unit = if super::parquet::is_parquet(path) {
        "row"
    } else {
        "line"
    };
    Error::file(path, format!("{unit} {line}: {msg}"))
}

fn field(
    path: &Path,
    line: usize,
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Field> {
    match obj.get(name) {
        None | Some(Value::Null) => Err(err(path, line, format!("field `{name}` is missing"))),
        Some(Value::String(s)) => Ok(Field::Text(s.clone())),
        Some(v @ Value::Array(_)) => serde_json::from_value::<Vec<Message>>(v.clone())
            .map(Field::Chat)
            .map_err(|e| err(path, line, format!("field `{name}`: expected a string or a list of {{\"role\", \"content\"}} messages ({e})"))),
        Some(other) => Err(err(path, line, format!("field `{name}`: expected a string or a list of messages, got {other}"))),
    }
}

/// Read the JSON objects of a JSONL file with their line numbers.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    Ok(read_jsonl_lines(path)?
        .into_iter()
        .map(|(line, o, _)| (line, o))
        .collect())
}

/// One line of a JSONL file: its number, its object, and its text as written.
pub type JsonlLine = super::parquet::Record;

/// The user's column names for ponder's fields (`--question-field passage,question`),
/// for data whose columns are not named as ponder's. Several columns are joined with a
/// space, in the order given.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FieldArgs {
    /// Column(s) holding the prompt (comma-separated columns are joined with a space).
    #[arg(long)]
    pub prompt_field: Option<String>,
    /// Column(s) holding the question (eval and recipe data).
    #[arg(long)]
    pub question_field: Option<String>,
    /// Column holding the gold answer (a number with a unit, "9 apples", yields 9).
    #[arg(long)]
    pub answer_field: Option<String>,
    /// Column holding the SFT completion.
    #[arg(long)]
    pub completion_field: Option<String>,
    /// Column holding the chosen completion (DPO).
    #[arg(long)]
    pub chosen_field: Option<String>,
    /// Column holding the rejected completion (DPO).
    #[arg(long)]
    pub rejected_field: Option<String>,
    /// Column holding a conversation (a list of {role, content}).
    #[arg(long)]
    pub messages_field: Option<String>,
}

static FIELD_MAP: std::sync::RwLock<Vec<(String, Vec<String>)>> =
    std::sync::RwLock::new(Vec::new());

impl FieldArgs {
    /// Use these names for every data file this process reads.
    pub fn install(&self) -> Result<()> {
        let mut map = Vec::new();
        for (field, cols) in [
            ("prompt", &self.prompt_field),
            ("question", &self.question_field),
            ("answer", &self.answer_field),
            ("completion", &self.completion_field),
            ("chosen", &self.chosen_field),
            ("rejected", &self.rejected_field),
            ("messages", &self.messages_field),
        ] {
            if let Some(c) = cols {
                let cols: Vec<String> = c.split(',').map(|x| x.trim().to_string()).collect();
                if cols.iter().any(|x| x.is_empty()) {
                    return Err(Error::invalid(
                        "data",
                        format!("--{field}-field {c:?}: an empty column name"),
                    ));
                }
                map.push((field.to_string(), cols));
            }
        }
        *FIELD_MAP.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(())
    }
}

/// Rename the user's columns to ponder's fields in one record (see [`FieldArgs`]).
fn apply_field_map(
    path: &Path,
    line: usize,
    o: &mut serde_json::Map<String, Value>,
    raw: &str,
) -> Result<bool> {
    let map = FIELD_MAP.read().unwrap_or_else(|e| e.into_inner());
    if map.is_empty() {
        return Ok(false);
    }
    let mut moved = Vec::new();
    for (field, cols) in map.iter() {
        let mut parts = Vec::new();
        for c in cols {
            match o.get(c) {
                None | Some(Value::Null) => {
                    return Err(err(
                        path,
                        line,
                        format!("column `{c}` (named by --{field}-field) is missing"),
                    ))
                }
                // a number keeps its text as written (1e20 stays 1e20)
                Some(Value::Number(n)) => {
                    let exact = serde_json::from_str::<
                        std::collections::HashMap<String, &serde_json::value::RawValue>,
                    >(raw)
                    .ok()
                    .and_then(|m| m.get(c).map(|r| r.get().trim().to_string()));
                    parts.push(Value::String(exact.unwrap_or_else(|| n.to_string())));
                }
                Some(v) => parts.push(v.clone()),
            }
        }
        let v = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            let mut text = Vec::new();
            for (c, p) in cols.iter().zip(&parts) {
                match p {
                    Value::String(s) => text.push(s.trim().to_string()),
                    other => {
                        return Err(err(
                            path,
                            line,
                            format!("column `{c}` is {other}, not text: only text columns can be joined (--{field}-field)"),
                        ))
                    }
                }
            }
            Value::String(text.join(" "))
        };
        moved.push((field.clone(), cols.clone(), v));
    }
    // every source column goes before any field is set: a column may share its name with
    // another mapping's field (--answer-field final --completion-field answer)
    for (_, cols, _) in &moved {
        for c in cols {
            o.remove(c);
        }
    }
    for (field, _, v) in moved {
        o.insert(field, v);
    }
    Ok(true)
}

/// [`read_jsonl`] of a file ponder wrote itself (predictions, a run's own records): the
/// `--*-field` names, meant for the user's data, do not apply.
pub fn read_jsonl_own(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    Ok(read_records(path)?
        .into_iter()
        .map(|(line, o, _)| (line, o))
        .collect())
}

/// [`read_jsonl`], with each object's line as written (for a number's exact text). A
/// `.parquet` file is read as rows of the same objects. The `--*-field` names apply.
pub fn read_jsonl_lines(path: &Path) -> Result<Vec<JsonlLine>> {
    let mut rows = read_records(path)?;
    for (line, o, text) in rows.iter_mut() {
        // the line's text stays as written: an unmapped number is read from it exactly,
        // and a mapped one has already become its exact text
        apply_field_map(path, *line, o, text)?;
    }
    Ok(rows)
}

fn read_records(path: &Path) -> Result<Vec<JsonlLine>> {
    if super::parquet::is_parquet(path) {
        return super::parquet::read_rows(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let last_content = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    for (i, l) in lines[..last_content].iter().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            return Err(err(
                path,
                line,
                "empty line (every line must be one JSON object)",
            ));
        }
        match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => out.push((line, o, l.to_string())),
            Ok(other) => {
                return Err(err(
                    path,
                    line,
                    format!("expected a JSON object, got {}", short(&other.to_string())),
                ))
            }
            Err(e) => return Err(err(path, line, format!("not valid JSON: {e}"))),
        }
    }
    if out.is_empty() {
        return Err(Error::file(path, "no examples (the file is empty)"));
    }
    Ok(out)
}

fn short(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The text of a prompt and of completions that continue it.
fn render(
    tok: &Tok,
    path: &Path,
    line: usize,
    prompt: &Field,
    completions: &[&Field],
) -> Result<(String, Vec<String>)> {
    match prompt {
        Field::Text(p) => {
            let cs = completions
                .iter()
                .map(|c| match c {
                    Field::Text(t) => Ok(t.clone()),
                    Field::Chat(_) => Err(err(path, line, "the prompt is a string but a completion is a conversation; use one kind for all fields")),
                })
                .collect::<Result<_>>()?;
            Ok((p.clone(), cs))
        }
        Field::Chat(pm) => {
            let ptext = tok
                .apply_chat_template(pm, true)
                .map_err(|e| err(path, line, e))?;
            let mut cs = Vec::new();
            for c in completions {
                let Field::Chat(cm) = c else {
                    return Err(err(path, line, "the prompt is a conversation but a completion is a string; use one kind for all fields"));
                };
                let mut all = pm.clone();
                all.extend(cm.iter().cloned());
                let full = tok
                    .apply_chat_template(&all, false)
                    .map_err(|e| err(path, line, e))?;
                let rest = full.strip_prefix(&ptext).ok_or_else(|| err(path, line, "the chat template renders the prompt differently inside the full conversation; cannot split off the completion"))?;
                cs.push(rest.to_string());
            }
            Ok((ptext, cs))
        }
    }
}

/// Tokenise one prompt/completion the TRL way and apply truncation. Returns the sequence
/// and whether it was shortened; None when no completion token is left.
fn tokenize(
    tok: &Tok,
    eos: u32,
    prompt: &str,
    completion: &str,
    t: &Truncation,
) -> Result<(Option<Seq>, bool)> {
    let mut p = tok.encode(prompt, false)?;
    let mut c = tok.encode(completion, false)?;
    c.push(eos);
    if let Some((_, bos)) = &tok.bos {
        if p.first() != Some(bos) {
            p.insert(0, *bos);
        }
    }
    let mut cut = false;
    if let Some(mp) = t.max_prompt_length {
        if p.len() > mp {
            p.drain(..p.len() - mp);
            cut = true;
        }
    }
    let mut ids = p.clone();
    let mut prompt_len = p.len();
    ids.extend(&c);
    if let Some(ml) = t.max_length {
        if ids.len() > ml {
            cut = true;
            match t.mode {
                TruncationMode::KeepStart => {
                    ids.truncate(ml);
                    prompt_len = prompt_len.min(ml);
                }
                TruncationMode::KeepEnd => {
                    let drop = ids.len() - ml;
                    ids.drain(..drop);
                    prompt_len = prompt_len.saturating_sub(drop);
                }
            }
        }
    }
    // the first token has no context to be predicted from: with no prompt left (an empty
    // prompt and no BOS, or truncation that cut the whole prompt) it becomes the context
    prompt_len = prompt_len.max(1);
    if ids.len() <= prompt_len {
        return Ok((None, cut));
    }
    Ok((Some(Seq { ids, prompt_len }), cut))
}

fn eos_of(tok: &Tok) -> Result<u32> {
    tok.eos.as_ref().map(|e| e.1).ok_or_else(|| {
        Error::invalid(
            "data",
            "the tokenizer defines no eos_token (tokenizer_config.json); completions need one",
        )
    })
}

/// One SFT example from text already in memory (a recipe's samples), tokenised exactly as
/// the file readers do: None when truncation leaves no completion token.
pub fn sft_example(
    tok: &Tok,
    prompt: &str,
    completion: &str,
    t: &Truncation,
) -> Result<Option<Seq>> {
    Ok(tokenize(tok, eos_of(tok)?, prompt, completion, t)?.0)
}

/// One preference pair from text in memory, tokenised as [`load_pairs`] does.
pub fn pair_example(
    tok: &Tok,
    prompt: &str,
    chosen: &str,
    rejected: &str,
    t: &Truncation,
) -> Result<Option<Pair>> {
    let eos = eos_of(tok)?;
    let c = tokenize(tok, eos, prompt, chosen, t)?.0;
    let r = tokenize(tok, eos, prompt, rejected, t)?.0;
    Ok(c.zip(r).map(|(chosen, rejected)| Pair { chosen, rejected }))
}

/// Load preference pairs.
pub fn load_pairs(path: &Path, tok: &Tok, t: &Truncation) -> Result<(Vec<Pair>, DataStats)> {
    let eos = eos_of(tok)?;
    let mut stats = DataStats::default();
    let mut out = Vec::new();
    // a Parquet dataset's other columns (ids, sources) are normal; a JSONL line's are typos
    let strict = !super::parquet::is_parquet(path);
    for (line, o) in read_jsonl(path)? {
        for k in o.keys() {
            if strict && !["prompt", "chosen", "rejected"].contains(&k.as_str()) {
                return Err(err(
                    path,
                    line,
                    format!(
                        "unexpected field `{k}` (a preference line has prompt, chosen, rejected)"
                    ),
                ));
            }
        }
        let (p, c, r) = (
            field(path, line, &o, "prompt")?,
            field(path, line, &o, "chosen")?,
            field(path, line, &o, "rejected")?,
        );
        let (ptext, comps) = render(tok, path, line, &p, &[&c, &r])?;
        let (cs, cut_c) = tokenize(tok, eos, &ptext, &comps[0], t)?;
        let (rs, cut_r) = tokenize(tok, eos, &ptext, &comps[1], t)?;
        stats.examples += 1;
        stats.truncated += (cut_c || cut_r) as usize;
        match (cs, rs) {
            (Some(chosen), Some(rejected)) => out.push(Pair { chosen, rejected }),
            _ => stats.dropped += 1,
        }
    }
    if out.is_empty() {
        return Err(Error::file(path, format!("no trainable pairs ({stats})")));
    }
    Ok((out, stats))
}

/// Load SFT examples.
pub fn load_sft(path: &Path, tok: &Tok, t: &Truncation) -> Result<(Vec<Seq>, DataStats)> {
    let eos = eos_of(tok)?;
    let mut stats = DataStats::default();
    let mut out = Vec::new();
    for (line, o) in read_jsonl(path)? {
        let (ptext, comp) = if o.contains_key("messages") {
            let Field::Chat(mut msgs) = field(path, line, &o, "messages")? else {
                return Err(err(
                    path,
                    line,
                    "field `messages`: expected a list of messages",
                ));
            };
            let last = msgs
                .pop()
                .ok_or_else(|| err(path, line, "field `messages` is empty"))?;
            if last.role != "assistant" {
                return Err(err(
                    path,
                    line,
                    format!(
                        "the last message must be the assistant's (the completion), not '{}'",
                        last.role
                    ),
                ));
            }
            if msgs.is_empty() {
                return Err(err(
                    path,
                    line,
                    "field `messages` needs a prompt before the assistant's reply",
                ));
            }
            let (p, cs) = render(
                tok,
                path,
                line,
                &Field::Chat(msgs),
                &[&Field::Chat(vec![last])],
            )?;
            (p, cs.into_iter().next().unwrap())
        } else {
            let (p, c) = (
                field(path, line, &o, "prompt")?,
                field(path, line, &o, "completion")?,
            );
            let (p, cs) = render(tok, path, line, &p, &[&c])?;
            (p, cs.into_iter().next().unwrap())
        };
        let (s, cut) = tokenize(tok, eos, &ptext, &comp, t)?;
        stats.examples += 1;
        stats.truncated += cut as usize;
        match s {
            Some(s) => out.push(s),
            None => stats.dropped += 1,
        }
    }
    if out.is_empty() {
        return Err(Error::file(
            path,
            format!("no trainable examples ({stats})"),
        ));
    }
    Ok((out, stats))
}
