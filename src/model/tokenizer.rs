//! `tokenizer.json` through the tokenizers crate, plus what `tokenizer_config.json` and
//! `generation_config.json` say about special tokens, BOS handling, EOS ids and the chat
//! template.

use std::path::Path;

use serde_json::Value;

use super::chat::{self, Message};
use crate::error::{Error, Result};

pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<(String, u32)>,
    pub eos: Option<(String, u32)>,
    pub pad: Option<(String, u32)>,
    pub chat_template: Option<String>,
    /// EOS ids from generation_config.json (falls back to the tokenizer's EOS).
    pub eos_ids: Vec<u32>,
    /// The tokenizer.json it came from (named in errors).
    pub path: std::path::PathBuf,
}

/// A special-token entry: a string, or an AddedToken object {"content": ...}.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// Run a call into the tokenizers crate, turning its panics (it has several on malformed
/// files) into an error naming tokenizer.json.
fn guard<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, String>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::file(path, e)),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::file(
                path,
                format!("the tokenizers crate failed to {what} with this file ({msg}); the file is malformed"),
            ))
        }
    }
}

/// Walk a normalizer or pre-tokenizer description, refusing what the tokenizers crate
/// panics on: a `Replace` with an empty pattern.
fn check_replace(path: &Path, field: &str, v: &Value) -> Result<()> {
    match v {
        Value::Object(o) => {
            if o.get("type").and_then(|t| t.as_str()) == Some("Replace") {
                let empty = match o.get("pattern") {
                    Some(Value::Object(p)) => {
                        p.values().any(|x| x.as_str().is_some_and(|s| s.is_empty()))
                    }
                    Some(Value::String(s)) => s.is_empty(),
                    _ => false,
                };
                if empty {
                    return Err(Error::file(
                        path,
                        format!("field `{field}`: a Replace with an empty pattern"),
                    ));
                }
            }
            o.values().try_for_each(|x| check_replace(path, field, x))
        }
        Value::Array(a) => a.iter().try_for_each(|x| check_replace(path, field, x)),
        _ => Ok(()),
    }
}

/// Make a tokenizer.json safe to load and faithful to transformers: its `truncation` and
/// `padding` blocks are dropped (transformers ignores them unless asked, and ponder's own
/// truncation is explicit and counted), saying so once; fields the tokenizers crate is
/// known to panic on are refused with an error naming them.
fn sanitize(path: &Path, v: &mut Value) -> Result<()> {
    let Some(o) = v.as_object_mut() else {
        return Err(Error::file(path, "expected a JSON object"));
    };
    let mut dropped = Vec::new();
    for k in ["truncation", "padding"] {
        if o.get(k).is_some_and(|x| !x.is_null()) {
            o.insert(k.into(), Value::Null);
            dropped.push(k);
        }
    }
    if !dropped.is_empty() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "note: {}: ignoring its {} block(s), as transformers does; ponder truncates only with --max-length",
                path.display(),
                dropped.join(" and ")
            )
        });
    }
    for f in ["normalizer", "pre_tokenizer"] {
        if let Some(x) = o.get(f) {
            check_replace(path, f, x)?;
        }
    }
    // BPE merges must carry the continuing-subword prefix the model declares (the crate
    // slices the second token by the prefix's length without checking)
    if let Some(m) = o.get("model").and_then(|m| m.as_object()) {
        let prefix = m
            .get("continuing_subword_prefix")
            .and_then(|p| p.as_str())
            .unwrap_or("");
        if !prefix.is_empty() {
            for merge in m
                .get("merges")
                .and_then(|x| x.as_array())
                .into_iter()
                .flatten()
            {
                let second = match merge {
                    Value::String(t) => t.split_once(' ').map(|(_, b)| b.to_string()),
                    Value::Array(a) => a.get(1).and_then(|b| b.as_str()).map(String::from),
                    _ => None,
                };
                if second.is_some_and(|b| !b.starts_with(prefix)) {
                    return Err(Error::file(
                        path,
                        format!("field `model.merges`: a merge's second token lacks the continuing_subword_prefix {prefix:?}"),
                    ));
                }
            }
        }
    }
    // a template post-processor may only name special tokens it defines
    if let Some(pp) = o.get("post_processor") {
        let mut stack = vec![pp];
        while let Some(x) = stack.pop() {
            let Some(m) = x.as_object() else { continue };
            if m.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing") {
                let defined = m.get("special_tokens").and_then(|t| t.as_object());
                for part in ["single", "pair"] {
                    for piece in m.get(part).and_then(|p| p.as_array()).into_iter().flatten() {
                        if let Some(id) = piece.pointer("/SpecialToken/id").and_then(|i| i.as_str())
                        {
                            if !defined.is_some_and(|d| d.contains_key(id)) {
                                return Err(Error::file(
                                    path,
                                    format!("field `post_processor`: the template names special token {id:?}, which its special_tokens do not define"),
                                ));
                            }
                        }
                    }
                }
            }
            if let Some(list) = m.get("processors").and_then(|p| p.as_array()) {
                stack.extend(list);
            }
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::files::read_regular_to_string(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))
}

impl Tok {
    /// Load the tokenizer of a model directory, or of a GGUF file (built from its
    /// `tokenizer.ggml.*` metadata).
    pub fn load(dir: &Path) -> Result<Tok> {
        if super::gguf::is_gguf(dir) {
            let g = super::gguf::GgufFile::open(dir)?;
            return Tok::from_gguf(&g)?.ok_or_else(|| {
                Error::file(
                    dir,
                    "this GGUF file carries no tokenizer (no tokenizer.ggml.model)",
                )
            });
        }
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::file(
                &path,
                "missing: ponder needs the Hugging Face fast-tokenizer file tokenizer.json",
            ));
        }
        let text = crate::files::read_regular_to_string(&path)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("not valid JSON: {e}")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);
        // chat_template.jinja (transformers 5 writes it) takes priority, as in transformers
        let jinja = dir.join("chat_template.jinja");
        let jinja = if jinja.exists() {
            Some(crate::files::read_regular_to_string(&jinja)?)
        } else {
            None
        };
        let gen = read_json(&dir.join("generation_config.json"))?;
        Tok::from_json(&path, json, &cfg_path, cfg, jinja, gen)
    }

    /// The tokenizer a GGUF file carries, or None when it has none.
    pub fn from_gguf(g: &super::gguf::GgufFile) -> Result<Option<Tok>> {
        let Some((json, cfg, gen)) = super::gguf::tokenizer::hf_files(g)? else {
            return Ok(None);
        };
        Tok::from_json(&g.path, json, &g.path, cfg, None, Some(gen)).map(Some)
    }

    /// A tokenizer from the contents of tokenizer.json, tokenizer_config.json,
    /// chat_template.jinja and generation_config.json (`path` and `cfg_path` are named in
    /// errors).
    pub fn from_json(
        path: &Path,
        mut json: Value,
        cfg_path: &Path,
        cfg: Value,
        jinja: Option<String>,
        gen: Option<Value>,
    ) -> Result<Tok> {
        let path = path.to_path_buf();
        sanitize(&path, &mut json)?;
        let inner = guard(&path, "load", || {
            serde_json::from_value::<tokenizers::Tokenizer>(json)
                .map_err(|e| format!("cannot load tokenizer: {e}"))
        })?;
        let lookup = |field: &str| -> Result<Option<(String, u32)>> {
            match token_str(cfg.get(field)) {
                None => Ok(None),
                Some(s) => match inner.token_to_id(&s) {
                    Some(id) => Ok(Some((s, id))),
                    None => Err(Error::file(
                        cfg_path,
                        format!(
                            "field `{field}`: token {s:?} is not in tokenizer.json's vocabulary"
                        ),
                    )),
                },
            }
        };
        let (bos, eos, pad) = (
            lookup("bos_token")?,
            lookup("eos_token")?,
            lookup("pad_token")?,
        );
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        let chat_template = jinja.or(chat_template);
        let mut eos_ids: Vec<u32> = match gen.as_ref().and_then(|g| g.get("eos_token_id")) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64().map(|n| n as u32))
                .collect(),
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            _ => vec![],
        };
        if let Some((_, id)) = &eos {
            if !eos_ids.contains(id) {
                eos_ids.push(*id);
            }
        }
        Ok(Tok {
            inner,
            bos,
            eos,
            pad,
            chat_template,
            eos_ids,
            path,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`. `special` applies the tokenizer's post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        guard(self.path(), "encode", || {
            self.inner
                .encode(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| format!("cannot encode: {e}"))
        })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        guard(self.path(), "decode", || {
            self.inner
                .decode(ids, skip_special)
                .map_err(|e| format!("cannot decode: {e}"))
        })
    }

    /// Render the chat template (Hugging Face semantics) for `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self.chat_template.as_deref().ok_or_else(|| {
            Error::invalid(
                "chat",
                "this model's tokenizer_config.json has no chat_template",
            )
        })?;
        chat::render(
            t,
            messages,
            add_generation_prompt,
            self.bos.as_ref().map(|b| b.0.as_str()),
            self.eos.as_ref().map(|e| e.0.as_str()),
        )
    }

    /// Ids of a rendered chat: the template already holds any BOS, so no special tokens
    /// are added (as transformers' apply_chat_template(tokenize=True)).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

/// Incremental detokenisation: text arrives as ids are pushed, without re-decoding the
/// whole sequence each time. Each push decodes only the ids since the last point where the
/// text was complete (a window of a few tokens), and holds back output while the window
/// ends in an incomplete UTF-8 character (byte-level BPE splits characters across ids).
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// `ids[prefix..read]` decode to the text already emitted from this window.
    prefix: usize,
    read: usize,
    text: String,
    skip_special: bool,
}

impl StreamDecoder {
    /// A decoder that keeps special tokens' text (what a steering hook or a stop string sees).
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// A decoder that leaves special tokens out (what a person reads).
    pub fn skipping_special() -> StreamDecoder {
        StreamDecoder {
            skip_special: true,
            ..Default::default()
        }
    }

    /// Append one id; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tok, id: u32) -> Result<&str> {
        self.ids.push(id);
        // decoding a window, not one id alone, keeps decoders that strip a leading space
        // (sentencepiece's "▁") or merge bytes across ids right
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        let start = self.text.len();
        if now.len() >= before.len() && now.starts_with(&before) && !now.ends_with('\u{FFFD}') {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(&self.text[start..])
    }

    /// Everything decoded so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
