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
}

/// A special-token entry: a string, or an AddedToken object {"content": ...}.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))
}

impl Tok {
    pub fn load(dir: &Path) -> Result<Tok> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::file(
                &path,
                "missing: ponder needs the Hugging Face fast-tokenizer file tokenizer.json",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::file(&path, format!("cannot load tokenizer: {e}")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(Value::Null);
        let lookup = |field: &str| -> Result<Option<(String, u32)>> {
            match token_str(cfg.get(field)) {
                None => Ok(None),
                Some(s) => match inner.token_to_id(&s) {
                    Some(id) => Ok(Some((s, id))),
                    None => Err(Error::file(
                        &cfg_path,
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
        // chat_template.jinja (transformers 5 writes it) takes priority, as in transformers
        let chat_template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(_) => chat_template,
        };
        let gen_path = dir.join("generation_config.json");
        let mut eos_ids: Vec<u32> = match read_json(&gen_path)?
            .as_ref()
            .and_then(|g| g.get("eos_token_id"))
        {
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
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`. `special` applies the tokenizer's post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::invalid("tokenizer", format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::invalid("tokenizer", format!("cannot decode: {e}")))
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
