//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`) <-> Hugging Face's tokenizer.json.
//!
//! ponder reads llama.cpp's `llama` tokenizer model (SentencePiece BPE, see `spm`), and
//! reads and writes its `gpt2` tokenizer model: byte-level BPE with a
//! vocabulary (`tokens`), `merges` ("a b" strings) and `token_type`s (1 normal, 2 unknown,
//! 3 control, 4 user-defined, 5 unused, 6 byte). Control and user-defined tokens become
//! tokenizer.json's added tokens (special, and not special). The pre-tokenizer is named
//! (`tokenizer.ggml.pre`); each name stands for llama.cpp's list of split regexes, written
//! here as the tokenizers-crate pre-tokenizer that splits the same way.

use serde_json::{json, Value as Json};

use super::format::Value;
use super::GgufFile;
use crate::error::{Error, Result};

/// GPT-2's split regex.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// llama.cpp's DEFAULT pre-tokenizer: punctuation runs, GPT-2's regex, digit runs, then
/// groups of three digits, each splitting the pieces of the one before.
const DEFAULT_REGEXES: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];
/// The pre names llama.cpp reads with Llama 3's type (merges ignored for whole-token
/// pieces, BOS added by default).
const LLAMA3_NAMES: [&str; 4] = ["llama3", "llama-bpe", "llama-v3", "falcon3"];

/// Llama 3's split regex: numbers in groups of up to three digits.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: as Llama 3's, one digit at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn split_then_bytes(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [split(regex), byte_level(false)]})
}

/// The pre-tokenizer (and normalizer) that splits as llama.cpp does for pre name `pre`.
fn pre_tokenizer(pre: &str) -> Option<(Json, Json)> {
    Some(match pre {
        // GPT-2's regex after isolating every digit
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
        ),
        "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" => {
            (Json::Null, byte_level(true))
        }
        "default" => {
            let mut list: Vec<Json> = DEFAULT_REGEXES.iter().map(|r| split(r)).collect();
            list.push(byte_level(false));
            (
                Json::Null,
                json!({"type": "Sequence", "pretokenizers": list}),
            )
        }
        "llama3" | "llama-bpe" | "llama-v3" | "dbrx" | "smaug-bpe" | "falcon3" => {
            (Json::Null, split_then_bytes(LLAMA3_REGEX))
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => {
            (json!({"type": "NFC"}), split_then_bytes(QWEN2_REGEX))
        }
        _ => return None,
    })
}

/// The llama.cpp pre name for a tokenizer.json pre-tokenizer, when it is one ponder knows.
fn pre_name(pre: &Json) -> Option<&'static str> {
    let is_bytes = |v: &Json, regex: bool| {
        v.get("type").and_then(|t| t.as_str()) == Some("ByteLevel")
            && v.get("use_regex").and_then(|u| u.as_bool()).unwrap_or(true) == regex
    };
    if is_bytes(pre, true) {
        return Some("gpt-2");
    }
    let list = pre.get("pretokenizers")?.as_array()?;
    let regex = |v: &Json| {
        v.pointer("/pattern/Regex")
            .and_then(|r| r.as_str())
            .map(String::from)
    };
    if list.len() == DEFAULT_REGEXES.len() + 1
        && is_bytes(&list[DEFAULT_REGEXES.len()], false)
        && list
            .iter()
            .zip(DEFAULT_REGEXES)
            .all(|(v, r)| regex(v).as_deref() == Some(r))
    {
        return Some("default");
    }
    match list.as_slice() {
        [d, b]
            if d.get("type").and_then(|t| t.as_str()) == Some("Digits")
                && d.get("individual_digits").and_then(|i| i.as_bool()) == Some(true)
                && is_bytes(b, true) =>
        {
            Some("smollm")
        }
        [s, b] if is_bytes(b, false) => {
            match s.pointer("/pattern/Regex").and_then(|r| r.as_str()) {
                Some(LLAMA3_REGEX) => Some("llama-bpe"),
                Some(QWEN2_REGEX) => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
    }
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let v = g
        .meta(key)
        .ok_or_else(|| Error::file(&g.path, format!("metadata key `{key}` is missing")))?;
    let a = v.as_array().ok_or_else(|| {
        Error::file(
            &g.path,
            format!(
                "metadata key `{key}` is {}; expected an array of strings",
                v.describe()
            ),
        )
    })?;
    a.iter()
        .map(|x| {
            x.as_str().ok_or_else(|| {
                Error::file(
                    &g.path,
                    format!("metadata key `{key}` holds a non-string ({})", x.describe()),
                )
            })
        })
        .collect()
}

/// tokenizer.json, tokenizer_config.json and generation_config.json for the tokenizer of
/// `g`, or None when the file carries no tokenizer.
pub fn hf_files(g: &GgufFile) -> Result<Option<(Json, Json, Json)>> {
    let Some(model) = g.meta_str_opt("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    // `llama`: SentencePiece BPE (Llama 1 and 2, Mistral, TinyLlama); see `spm`
    let spm = match model {
        "gpt2" => false,
        "llama" => true,
        _ => {
            return Err(Error::file(
                &g.path,
                format!("tokenizer model `{model}` (tokenizer.ggml.model) is not supported; ponder reads `gpt2` (byte-level BPE) and `llama` (SentencePiece BPE) tokenizers"),
            ))
        }
    };
    let pre = if spm {
        ""
    } else {
        g.meta_str_opt("tokenizer.ggml.pre")?.unwrap_or("default")
    };
    let (normalizer, pre_tok) = if spm {
        (Json::Null, Json::Null)
    } else {
        pre_tokenizer(pre).ok_or_else(|| {
            Error::file(
                &g.path,
                format!("pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not one ponder knows; known: smollm, gpt2, llama-bpe, qwen2, deepseek-r1-qwen and their aliases"),
            )
        })?
    };
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = if spm {
        Vec::new()
    } else {
        strings(g, "tokenizer.ggml.merges")?
    };
    let types: Vec<i64> = match g.meta("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_i64().unwrap_or(-1)).collect())
            .filter(|t: &Vec<i64>| t.len() == tokens.len())
            .ok_or_else(|| {
                Error::file(
                    &g.path,
                    format!(
                        "tokenizer.ggml.token_type is {}; expected one integer per token ({})",
                        v.describe(),
                        tokens.len()
                    ),
                )
            })?,
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(t.to_string(), id.into()).is_some() {
            return Err(Error::file(
                &g.path,
                format!("tokenizer.ggml.tokens lists {t:?} twice (the second at id {id})"),
            ));
        }
        match ty {
            1 | 6 => {}
            2..=5 => added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == 4, "special": ty != 4,
            })),
            other => {
                return Err(Error::file(
                    &g.path,
                    format!("token {id} ({t:?}) has token type {other}; expected 1..=6"),
                ))
            }
        }
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits a merge at its first space after the first character
        let cut = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p);
        let Some(p) = cut else {
            return Err(Error::file(
                &g.path,
                format!("tokenizer.ggml.merges entry {i} ({m:?}) is not two tokens separated by a space"),
            ));
        };
        let (a, b) = (&m[..p], &m[p + 1..]);
        for part in [a, b] {
            if !vocab.contains_key(part) {
                return Err(Error::file(
                    &g.path,
                    format!("tokenizer.ggml.merges entry {i} ({m:?}) names {part:?}, which is not a token"),
                ));
            }
        }
        pairs.push(json!([a, b]));
    }
    let id_of = |key: &str| -> Result<Option<(u64, String)>> {
        match g.meta_u64_opt(key)? {
            None => Ok(None),
            Some(id) => match tokens.get(id as usize) {
                Some(t) => Ok(Some((id, t.to_string()))),
                None => Err(Error::file(
                    &g.path,
                    format!("{key} is {id}, past the {} tokens", tokens.len()),
                )),
            },
        }
    };
    let bos = id_of("tokenizer.ggml.bos_token_id")?;
    let eos = id_of("tokenizer.ggml.eos_token_id")?;
    let pad = id_of("tokenizer.ggml.padding_token_id")?;
    let unk = id_of("tokenizer.ggml.unknown_token_id")?;
    // llama.cpp adds a BOS by default for SentencePiece and Llama 3's pre-tokenizer type
    let add_bos = g
        .meta("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(spm || LLAMA3_NAMES.contains(&pre));
    let post = match (&bos, add_bos) {
        (Some((id, t)), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [id], "tokens": [t]}},
        }),
        _ if spm => Json::Null,
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
        }
    };
    let (normalizer, decoder, model) = if spm {
        super::spm::parts(g, &tokens, &types, unk.as_ref().map(|(_, t)| t.as_str()))?
    } else {
        let model = json!({
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": LLAMA3_NAMES.contains(&pre),
            "vocab": vocab, "merges": pairs,
        });
        (normalizer, byte_level(true), model)
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": post,
        "decoder": decoder,
        "model": model,
    });
    let name = |t: &Option<(u64, String)>| t.as_ref().map_or(Json::Null, |(_, s)| s.clone().into());
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(&bos),
        "eos_token": name(&eos),
        "pad_token": name(&pad),
        "unk_token": name(&unk),
        "add_bos_token": add_bos,
        "clean_up_tokenization_spaces": false,
        "gguf_pre_tokenizer": if spm { Json::Null } else { pre.into() },
    });
    if let Some(t) = g.meta_str_opt("tokenizer.chat_template")? {
        config["chat_template"] = t.into();
    }
    let id = |t: &Option<(u64, String)>| t.as_ref().map_or(Json::Null, |(i, _)| (*i).into());
    let generation = json!({
        "bos_token_id": id(&bos),
        "eos_token_id": id(&eos),
        "pad_token_id": id(&pad),
    });
    Ok(Some((tokenizer, config, generation)))
}

/// `tokenizer.ggml.*` metadata for a tokenizer (its tokenizer.json as the tokenizers crate
/// serializes it) padded to `vocab_size` entries, with the special ids and chat template.
pub fn gguf_meta(tok: &crate::model::Tok, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let err = |m: String| Error::file(&tok.path, m);
    let j = serde_json::to_value(&tok.inner)
        .map_err(|e| err(format!("cannot serialize the tokenizer: {e}")))?;
    let model = &j["model"];
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(err("only byte-level BPE tokenizers can be written to GGUF (llama.cpp's `gpt2` model); this one is not BPE".into()));
    }
    if model.get("byte_fallback").and_then(|b| b.as_bool()) == Some(true) {
        return Err(err("it is a SentencePiece tokenizer (BPE with byte fallback: llama.cpp's `llama` model), which ponder reads from GGUF but does not write yet; save to a Hugging Face directory instead".into()));
    }
    let pre = j.get("pre_tokenizer").and_then(pre_name).ok_or_else(|| {
        err(format!(
            "its pre-tokenizer ({}) is not one llama.cpp names (smollm, gpt-2, default, llama-bpe, qwen2)",
            j["pre_tokenizer"]
        ))
    })?;
    // llama.cpp applies no normalizer (Qwen2's NFC aside) and never adds a prefix space:
    // a tokenizer that needs either would tokenize differently there
    match j.get("normalizer") {
        None | Some(Json::Null) => {}
        Some(n) if pre == "qwen2" && n.get("type").and_then(|t| t.as_str()) == Some("NFC") => {}
        Some(n) => {
            return Err(err(format!(
                "its normalizer ({n}) has no GGUF equivalent; llama.cpp would tokenize differently"
            )))
        }
    }
    if j["pre_tokenizer"]
        .to_string()
        .contains("\"add_prefix_space\":true")
    {
        return Err(err(
            "it adds a prefix space (add_prefix_space), which llama.cpp's gpt2 tokenizer does not"
                .into(),
        ));
    }
    let vocab = tok.inner.get_vocab(true);
    let largest = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
    if largest > vocab_size {
        return Err(err(format!(
            "the tokenizer has ids up to {}, past the model's {vocab_size} embedding rows; llama.cpp needs one token per row",
            largest - 1
        )));
    }
    let n = vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (t, &id) in &vocab {
        tokens[id as usize] = Some(t.clone());
    }
    let added = tok.inner.get_added_tokens_decoder();
    let mut types = Vec::with_capacity(n);
    let mut list = Vec::with_capacity(n);
    for (i, t) in tokens.into_iter().enumerate() {
        let ty = match added.get(&(i as u32)) {
            Some(a) if a.special => 3,
            Some(_) => 4,
            None if t.is_none() => 4,
            None => 1,
        };
        list.push(Value::Str(t.unwrap_or_else(|| format!("[PAD{i}]"))));
        types.push(Value::I32(ty));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::Array(p) => Value::Str(format!(
                "{} {}",
                p.first().and_then(|x| x.as_str()).unwrap_or(""),
                p.get(1).and_then(|x| x.as_str()).unwrap_or("")
            )),
            other => Value::Str(other.as_str().unwrap_or("").to_string()),
        })
        .collect();
    // a TemplateProcessing that opens with a special token, at the top or inside a Sequence
    let mut add_bos = false;
    let mut stack: Vec<&Json> = j.get("post_processor").into_iter().collect();
    while let Some(p) = stack.pop() {
        add_bos |= p.pointer("/single/0/SpecialToken").is_some();
        stack.extend(
            p.get("processors")
                .and_then(|x| x.as_array())
                .into_iter()
                .flatten(),
        );
    }
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(list)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    for (key, t) in [
        ("tokenizer.ggml.bos_token_id", &tok.bos),
        ("tokenizer.ggml.eos_token_id", &tok.eos),
        ("tokenizer.ggml.padding_token_id", &tok.pad),
    ] {
        if let Some((_, id)) = t {
            meta.push((key.to_string(), Value::U32(*id)));
        }
    }
    meta.push((
        "tokenizer.ggml.add_bos_token".to_string(),
        Value::Bool(add_bos),
    ));
    if let Some(t) = &tok.chat_template {
        meta.push(("tokenizer.chat_template".to_string(), Value::Str(t.clone())));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let (_, json) = pre_tokenizer(pre).unwrap();
        let p: tokenizers::PreTokenizerWrapper = serde_json::from_value(json).unwrap();
        let mut s = PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(t, _, _)| t.to_string())
            .collect()
    }

    #[test]
    fn pre_tokenizers_split_as_llama_cpp_s_regex_lists() {
        // DEFAULT: punctuation runs, then GPT-2's regex, then digit runs, then threes
        assert_eq!(
            pieces("default", "Hello, world 12345!"),
            ["Hello", ",", "Ġworld", "Ġ", "123", "45", "!"]
        );
        // SMOLLM: every digit alone, then GPT-2's regex
        assert_eq!(
            pieces("smollm", "I have 123 apples"),
            ["I", "Ġhave", "Ġ", "1", "2", "3", "Ġapples"]
        );
        // LLAMA3: digits in threes; QWEN2: one at a time
        assert_eq!(pieces("llama-bpe", "x 12345"), ["x", "Ġ", "123", "45"]);
        assert_eq!(pieces("qwen2", "x 123"), ["x", "Ġ", "1", "2", "3"]);
        assert_eq!(pieces("gpt-2", "x 12345"), ["x", "Ġ12345"]);
        for name in ["default", "smollm", "llama-bpe", "qwen2", "gpt-2"] {
            let (_, json) = pre_tokenizer(name).unwrap();
            assert_eq!(
                pre_name(&json),
                Some(name),
                "{name} does not name itself back"
            );
        }
        assert!(pre_tokenizer("tekken").is_none());
    }
}
