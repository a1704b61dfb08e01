//! Reward models: `Qwen2ForSequenceClassification` and `LlamaForSequenceClassification`
//! checkpoints. The decoder is the causal LM's; the LM head is replaced by `score.weight`
//! `(num_labels, C)`, applied to the final-norm hidden state of one position per sequence.
//!
//! Which position, as transformers picks it: the last token that is not `pad_token_id`
//! (the rightmost such index; index 0 when every token is the pad token), or the last
//! token when the config has no pad id. A sequence whose text ends in the pad token (a
//! Llama template whose turns end in `</s>` while `</s>` is also the pad) is therefore read
//! one token earlier, and ponder does the same.

use std::path::Path;

use super::chat::Message;
use super::{LoadOpts, Model};
use crate::error::{Error, Result};
use crate::tensor::Device;

/// A loaded sequence classifier used as a judge.
pub struct RewardModel {
    pub model: Model,
}

impl RewardModel {
    /// Load the reward model in `dir`; a causal LM there is an error that says so.
    pub fn load(dir: &Path, device: Device) -> Result<RewardModel> {
        let cfg = super::config::Config::load(dir)?;
        if cfg.num_labels.is_none() {
            return Err(Error::file(
                dir.join("config.json"),
                "is a causal LM: a reward model is a Qwen2ForSequenceClassification or LlamaForSequenceClassification checkpoint (a score head)",
            ));
        }
        let opts = LoadOpts {
            device,
            keep_16bit: true,
            trainable: false,
        };
        Ok(RewardModel {
            model: Model::load_any(dir, cfg, opts)?,
        })
    }

    pub fn num_labels(&self) -> usize {
        self.model.cfg.num_labels.unwrap_or(1)
    }

    /// The position whose hidden state is scored (see the module comment).
    pub fn score_position(&self, ids: &[u32]) -> usize {
        match self.model.cfg.pad_token_id {
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
            None => ids.len().saturating_sub(1),
        }
    }

    /// Every label's score for one unpadded sequence of ids.
    pub fn score_ids(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("reward", "an empty sequence has no score"));
        }
        let max = self.model.cfg.max_position_embeddings;
        if ids.len() > max {
            return Err(Error::invalid(
                "reward",
                format!(
                    "{} tokens are past the reward model's max_position_embeddings = {max}",
                    ids.len()
                ),
            ));
        }
        let _ng = crate::autograd::NoGradGuard::new();
        let pos = self.score_position(ids);
        let out = self.model.net.forward(
            ids,
            1,
            ids.len(),
            super::Forward {
                logit_rows: Some(vec![pos as u32]),
                ..Default::default()
            },
        )?;
        out.logits.to_vec_f32()
    }

    /// The ids the judge scores for `instruction` answered by `answer`: the reward model's
    /// chat template over [user: instruction, assistant: answer] (its BOS, if any, comes
    /// from the template, as apply_chat_template(tokenize=True) gives), or, without a
    /// template, the two joined by a newline with the tokenizer's special tokens.
    pub fn encode(&self, instruction: &str, answer: &str) -> Result<Vec<u32>> {
        let tok = self.model.tokenizer()?;
        if tok.chat_template.is_some() {
            tok.encode_chat(
                &[
                    Message::new("user", instruction),
                    Message::new("assistant", answer),
                ],
                false,
            )
        } else {
            tok.encode(&format!("{instruction}\n{answer}"), true)
        }
    }

    /// The judge's score of `answer` to `instruction`: a one-label model's output.
    pub fn score(&self, instruction: &str, answer: &str) -> Result<f64> {
        if self.num_labels() != 1 {
            return Err(Error::file(
                self.model.dir.join("config.json"),
                format!(
                    "has {} labels; a reward-model judge needs one score per answer (num_labels 1)",
                    self.num_labels()
                ),
            ));
        }
        let ids = self.encode(instruction, answer)?;
        Ok(self.score_ids(&ids)?[0] as f64)
    }
}
