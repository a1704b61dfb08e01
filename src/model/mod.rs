//! Llama/Qwen2 checkpoints: config, safetensors weights, tokenizer and chat template (a
//! Hugging Face directory, or one GGUF file), the decoder, generation, and saving back to
//! either format.

pub mod chat;
pub mod compare;
pub mod config;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod layer;
pub mod reward;
pub mod rope;
pub mod sampling;
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
    /// Load the causal LM in `dir` (config.json, safetensors, tokenizer files). A
    /// sequence classifier (a reward model) is refused here: it has no LM head to
    /// generate or train with; [`reward::RewardModel`] loads those.
    pub fn load(dir: &Path, opts: LoadOpts) -> Result<Model> {
        if gguf::is_gguf(dir) {
            // one parse of the file gives the config, the tokenizer and the tensors
            let g = gguf::GgufFile::open(dir)?;
            let cfg = g.config()?;
            return Model::from_gguf(dir, g, cfg, opts);
        }
        let cfg = Config::load(dir)?;
        if cfg.num_labels.is_some() {
            return Err(crate::error::Error::file(
                dir.join("config.json"),
                "is a ...ForSequenceClassification model (a score head, no LM head): it can judge answers (tpo --judge reward-model:DIR) but not generate or train here",
            ));
        }
        Model::load_any(dir, cfg, opts)
    }

    /// Load `dir` with its config already read, whatever its head.
    pub(crate) fn load_any(dir: &Path, cfg: Config, opts: LoadOpts) -> Result<Model> {
        if gguf::is_gguf(dir) {
            return Model::from_gguf(dir, gguf::GgufFile::open(dir)?, cfg, opts);
        }
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

    /// The model in an open GGUF file. A model whose tokenizer ponder cannot build still
    /// loads (save to a directory, logits from ids); commands that need the tokenizer stop
    /// with the reason.
    fn from_gguf(dir: &Path, g: gguf::GgufFile, cfg: Config, opts: LoadOpts) -> Result<Model> {
        let tok = match Tok::from_gguf(&g) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("note: {e}");
                None
            }
        };
        let ckpt = weights::Checkpoint::from_gguf(g);
        let net = Transformer::load(&cfg, &ckpt, opts)?;
        Ok(Model {
            dir: dir.to_path_buf(),
            cfg,
            net,
            tok,
        })
    }

    /// The tokenizer, or an error naming the missing file.
    pub fn tokenizer(&self) -> Result<&Tok> {
        if self.tok.is_none() && gguf::is_gguf(&self.dir) {
            return Err(crate::error::Error::file(
                &self.dir,
                "this command needs the model's tokenizer, which ponder cannot build from this GGUF file (the note above says why)",
            ));
        }
        self.tok.as_ref().ok_or_else(|| {
            crate::error::Error::file(
                self.dir.join("tokenizer.json"),
                "missing: this command needs the model's tokenizer",
            )
        })
    }
}
