//! Llama/Qwen2 checkpoints: config, safetensors weights, tokenizer and chat template,
//! the decoder, generation, and saving back to a Hugging Face directory.

pub mod chat;
pub mod compare;
pub mod config;
pub mod generate;
pub mod rope;
pub mod save;
pub mod score;
pub mod tokenizer;
pub mod tokenizer_train;
pub mod transformer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::Config;
pub use tokenizer::Tok;
pub use transformer::{Forward, KvCache, LoadOpts, Output, Transformer};

use crate::error::Result;

/// A loaded model directory: the decoder, and the tokenizer when the directory has one.
pub struct Model {
    pub dir: PathBuf,
    pub cfg: Config,
    pub net: Transformer,
    pub tok: Option<Tok>,
}

impl Model {
    /// Load `dir` (config.json, safetensors, tokenizer files).
    pub fn load(dir: &Path, opts: LoadOpts) -> Result<Model> {
        let cfg = Config::load(dir)?;
        let ckpt = weights::Checkpoint::open(dir)?;
        let net = Transformer::load(&cfg, &ckpt, opts)?;
        let tok = if dir.join("tokenizer.json").exists() {
            Some(Tok::load(dir)?)
        } else {
            None
        };
        Ok(Model {
            dir: dir.to_path_buf(),
            cfg,
            net,
            tok,
        })
    }

    /// The tokenizer, or an error naming the missing file.
    pub fn tokenizer(&self) -> Result<&Tok> {
        self.tok.as_ref().ok_or_else(|| {
            crate::error::Error::file(
                self.dir.join("tokenizer.json"),
                "missing: this command needs the model's tokenizer",
            )
        })
    }
}
