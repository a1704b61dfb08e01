//! The reasoning workbench and the recipes built on it: the synthetic arithmetic task,
//! answer checking, calculator decoding and evaluation. A recipe is a loop over the
//! library (generate -> check -> build pairs -> train), never over the CLI.

pub mod answer;
pub mod calculator;
pub mod data;
pub mod demo;
pub mod eval;
pub mod judges;
pub mod pairs;
pub mod report;
pub mod run;
pub mod sample;
pub mod self_train;
pub mod synth;
pub mod thinkpo;
pub mod tpo;

use crate::error::Result;
use crate::model::tokenizer::Tok;

/// Calculator decoding as a steering hook for [`crate::model::generate::generate_steered`].
///
/// When a row's text ends inside an open annotation `<<expr=` (see
/// [`calculator::force_after`]), the hook forces the tokens of the result and `>>`.
/// The result is tokenised in context: the open annotation plus the result are encoded
/// together and the ids after the already-written text are forced, so a tokenizer that
/// merges `=` or digits with their neighbours (GPT-2, Llama 3) or one that splits every
/// digit (Qwen2) each get the ids they would have produced for that text. Where no id
/// boundary falls at the end of the written text, the forced string is encoded on its
/// own; either way the ids must decode to exactly the forced string, or nothing is forced.
pub struct Calculator<'t> {
    tok: &'t Tok,
    /// How many times a result was forced, and how many of those were rejected because
    /// the tokenizer could not reproduce the text.
    pub fired: usize,
    pub failed: usize,
}

impl<'t> Calculator<'t> {
    pub fn new(tok: &'t Tok) -> Calculator<'t> {
        Calculator {
            tok,
            fired: 0,
            failed: 0,
        }
    }

    /// The ids to force after `text`, if any.
    pub fn force(&mut self, text: &str) -> Option<Vec<u32>> {
        let s = calculator::force_after(text)?;
        let ids = self.ids_in_context(text, &s).ok().flatten();
        match ids {
            Some(ids) if !ids.is_empty() => {
                self.fired += 1;
                Some(ids)
            }
            _ => {
                self.failed += 1;
                None
            }
        }
    }

    fn ids_in_context(&self, text: &str, forced: &str) -> Result<Option<Vec<u32>>> {
        // the open annotation: from the last "<<" to the end of the text
        let ctx = &text[text.rfind("<<").unwrap_or(0)..];
        let whole = self.tok.encode(&format!("{ctx}{forced}"), false)?;
        for k in (1..whole.len()).rev() {
            let head = self.tok.decode(&whole[..k], false)?;
            if head.len() < ctx.len() {
                break;
            }
            if head == ctx && self.tok.decode(&whole[k..], false)? == forced {
                return Ok(Some(whole[k..].to_vec()));
            }
        }
        let alone = self.tok.encode(forced, false)?;
        if self.tok.decode(&alone, false)? == forced {
            return Ok(Some(alone));
        }
        Ok(None)
    }
}
