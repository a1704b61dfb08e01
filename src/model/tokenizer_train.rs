//! Training a byte-level BPE tokenizer on a corpus (the tokenizers crate's trainer) and
//! writing it as a Hugging Face tokenizer directory: tokenizer.json and
//! tokenizer_config.json, with an end-of-text token and a ChatML template.

use std::path::Path;

use serde_json::json;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// The end-of-text token (also the padding token).
pub const EOS: &str = "<|endoftext|>";
/// ChatML markers, so `--chat` works with the trained tokenizer.
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

#[derive(Clone, Debug)]
pub struct BpeOpts {
    /// Final vocabulary size, the 256 byte symbols and the special tokens included.
    pub vocab_size: usize,
    /// A merge must occur at least this often.
    pub min_frequency: u64,
    /// Split every digit into its own token (as Qwen2 does); off, digits merge into
    /// multi-digit tokens (as GPT-2 and Llama 3 do).
    pub split_digits: bool,
}

impl Default for BpeOpts {
    fn default() -> Self {
        BpeOpts {
            vocab_size: 512,
            min_frequency: 2,
            split_digits: true,
        }
    }
}

/// Train a byte-level BPE on `texts`.
pub fn train_bpe<S: AsRef<str> + Send>(texts: Vec<S>, o: &BpeOpts) -> Result<Tokenizer> {
    let specials = [EOS, IM_START, IM_END];
    if o.vocab_size < 256 + specials.len() || o.vocab_size > 1 << 20 {
        return Err(Error::invalid(
            "tokenizer train",
            format!(
                "--vocab-size {} is out of range: 259..=1048576 (256 bytes + 3 special tokens at least)",
                o.vocab_size
            ),
        ));
    }
    let err = |e: tokenizers::Error| Error::invalid("tokenizer train", e.to_string());
    let byte_level = ByteLevel::new(false, true, true);
    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if o.split_digits {
        pre.push(Digits::new(true).into());
    }
    pre.push(byte_level.into());
    let mut tk = Tokenizer::new(BPE::default());
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(pre))));
    tk.with_decoder(Some(ByteLevel::new(false, true, true)));
    tk.with_post_processor(Some(ByteLevel::new(false, true, true)));
    let special: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(o.vocab_size)
        .min_frequency(o.min_frequency)
        .show_progress(false)
        .special_tokens(special.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tk.train(&mut trainer, texts.into_iter()).map_err(err)?;
    tk.add_special_tokens(&special);
    Ok(tk)
}

/// Write `tok` as a tokenizer directory (tokenizer.json, tokenizer_config.json).
pub fn save_dir(tok: &Tokenizer, dir: &Path, model_max_length: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = tok
        .to_string(true)
        .map_err(|e| Error::invalid("tokenizer train", e.to_string()))?;
    let cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": null,
        "add_bos_token": false,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
        "chat_template": CHATML,
    });
    let cfg = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    crate::files::write_all_atomic(&[
        (dir.join("tokenizer.json"), text.into_bytes()),
        (dir.join("tokenizer_config.json"), cfg.into_bytes()),
    ])
}
