//! llama.cpp's `llama` tokenizer model: SentencePiece BPE. Pieces carry scores, spaces are
//! `▁` (U+2581), a space is put before the text (`tokenizer.ggml.add_space_prefix`, on by
//! default), and a character without a piece falls back to its UTF-8 bytes as `<0xXX>`
//! tokens. llama.cpp merges the adjacent pair whose joined piece scores highest, first;
//! as transformers' LlamaConverter does, that becomes tokenizer.json's BPE with byte
//! fallback whose merges are every split of a piece into two pieces, ranked by the
//! joined piece's score.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use super::GgufFile;
use crate::error::{Error, Result};

/// SentencePiece's space.
pub const SPACE: &str = "\u{2581}";

/// The merges of a SentencePiece vocabulary: for every normal piece (token type 1), in
/// order of score (highest first, then id), each split into two normal pieces, in order
/// of the left piece's id and then the right's.
pub fn merges(tokens: &[&str], scores: &[f32], types: &[i64]) -> Vec<(String, String)> {
    let normal = |i: usize| types.get(i).copied().unwrap_or(1) == 1;
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| normal(i))
        .map(|(i, &t)| (t, i))
        .collect();
    let mut order: Vec<usize> = (0..tokens.len()).filter(|&i| normal(i)).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut out = Vec::new();
    for i in order {
        let t = tokens[i];
        let mut splits: Vec<(usize, usize, usize)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(p, _)| Some((*ids.get(&t[..p])?, *ids.get(&t[p..])?, p)))
            .collect();
        splits.sort_unstable();
        out.extend(
            splits
                .into_iter()
                .map(|(_, _, p)| (t[..p].to_string(), t[p..].to_string())),
        );
    }
    out
}

/// Normalizer, decoder and model of tokenizer.json for the `llama` tokenizer of `g`,
/// given its tokens and their types; the unknown token's name, if any.
pub fn parts(
    g: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    unk: Option<&str>,
) -> Result<(Json, Json, Json)> {
    let scores: Vec<f32> = match g.meta("tokenizer.ggml.scores") {
        Some(v) => v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect())
            .filter(|s: &Vec<f32>| s.len() == tokens.len() && s.iter().all(|x| x.is_finite()))
            .ok_or_else(|| {
                Error::file(
                    &g.path,
                    format!(
                        "tokenizer.ggml.scores is {}; expected one finite number per token ({})",
                        v.describe(),
                        tokens.len()
                    ),
                )
            })?,
        None => {
            return Err(Error::file(
                &g.path,
                "metadata key `tokenizer.ggml.scores` is missing (a `llama` tokenizer ranks its pieces by it)",
            ))
        }
    };
    let prefix = g
        .meta("tokenizer.ggml.add_space_prefix")
        .and_then(super::Value::as_bool)
        .unwrap_or(true);
    Ok(parts_of(tokens, &scores, types, unk, prefix))
}

/// [`parts`] from the tokens, their scores and types, the unknown token, and whether a
/// space goes before the text.
pub fn parts_of(
    tokens: &[&str],
    scores: &[f32],
    types: &[i64],
    unk: Option<&str>,
    prefix: bool,
) -> (Json, Json, Json) {
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| (t.to_string(), i.into()))
        .collect();
    let pairs: Vec<Json> = merges(tokens, scores, types)
        .into_iter()
        .map(|(a, b)| json!([a, b]))
        .collect();
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": SPACE});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
        "ignore_merges": false, "vocab": vocab, "merges": pairs,
    });
    (
        normalizer,
        json!({"type": "Sequence", "decoders": decoders}),
        model,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// llama.cpp's SentencePiece tokenization, written plainly: the text's characters,
    /// then again and again the adjacent pair whose joined piece (a normal one) scores
    /// highest, leftmost first; a character without a piece as its bytes.
    fn llama_cpp_spm(text: &str, tokens: &[&str], scores: &[f32], types: &[i64]) -> Vec<u32> {
        let id: HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .filter(|&(i, _)| types[i] == 1)
            .map(|(i, &t)| (t, i))
            .collect();
        let text = format!(" {text}").replace(' ', SPACE);
        let mut syms: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                let joined = format!("{}{}", syms[i], syms[i + 1]);
                if let Some(&j) = id.get(joined.as_str()) {
                    if best.is_none_or(|(s, _)| scores[j] > s) {
                        best = Some((scores[j], i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        let byte = |b: u8| {
            tokens
                .iter()
                .position(|&t| t == format!("<0x{b:02X}>"))
                .unwrap() as u32
        };
        syms.iter()
            .flat_map(|s| match id.get(s.as_str()) {
                Some(&j) => vec![j as u32],
                None => s.bytes().map(byte).collect(),
            })
            .collect()
    }

    #[test]
    fn bpe_with_byte_fallback_tokenizes_as_llama_cpp_does() {
        // control tokens, the 256 bytes, then pieces over a b c d e and the space, with
        // scores all different and not in order of length
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut types: Vec<i64> = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        let pieces = [
            "▁", "a", "b", "c", "d", "e", "ab", "bc", "cd", "de", "ea", "abc", "bcd", "cde", "▁a",
            "▁ab", "▁abc", "▁d", "dd", "ddd", "e▁", "▁e", "aa", "aaa", "▁b", "bca", "dea",
        ];
        for p in pieces {
            tokens.push(p.to_string());
            types.push(1);
        }
        let scores: Vec<f32> = (0..tokens.len())
            .map(|i| -((i * 7919 % 997) as f32) / 10.0)
            .collect();
        let toks: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let (normalizer, decoder, model) = parts_of(&toks, &scores, &types, Some("<unk>"), true);
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": normalizer, "pre_tokenizer": null, "post_processor": null,
            "decoder": decoder, "model": model,
        });
        let tk = tokenizers::Tokenizer::from_str(&json.to_string()).unwrap();
        let mut rng = crate::util::rng(7);
        use rand::Rng;
        let alphabet: Vec<char> = "abcde é".chars().collect();
        for n in 0..400 {
            let len = 1 + n % 23;
            let text: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let want = llama_cpp_spm(&text, &toks, &scores, &types);
            let got = tk.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{text:?}");
            assert_eq!(tk.decode(&got, false).unwrap(), text, "{text:?} decoded");
        }
    }
}
