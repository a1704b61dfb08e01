//! Judges for TPO: each sees only the response part of a sample, never its thoughts.
//!
//! - `Verifier`: the answer checker against a gold answer (score 1 or 0).
//! - `Pairwise`: a chat model asked which of two responses is better, in both orders;
//!   the outcomes fill a battle matrix, and ELO scores come from the Bradley-Terry
//!   maximum-likelihood fit of that matrix.

use super::answer;
use crate::error::Result;
use crate::model::chat::Message;
use crate::model::{Tok, Transformer};

/// Bradley-Terry strengths by maximum likelihood, as ELO scores (400 log10 strength,
/// centred on mean 0). `wins[i][j]` counts i's wins over j; a tie adds 0.5 to both.
/// Fitted with the minorise-maximise iteration p_i <- W_i / sum_j n_ij / (p_i + p_j)
/// (Hunter 2004). A player with no win gets a small prior pseudo-win against every other,
/// so every strength stays finite.
pub fn bradley_terry_elo(wins: &[Vec<f64>]) -> Vec<f64> {
    let k = wins.len();
    if k == 0 {
        return Vec::new();
    }
    let prior = 0.1;
    let w = |i: usize, j: usize| wins[i][j] + if i != j { prior / k as f64 } else { 0.0 };
    let mut p = vec![1.0f64; k];
    for _ in 0..1000 {
        let mut next = vec![0.0; k];
        for i in 0..k {
            let wi: f64 = (0..k).filter(|&j| j != i).map(|j| w(i, j)).sum();
            let denom: f64 = (0..k)
                .filter(|&j| j != i)
                .map(|j| (w(i, j) + w(j, i)) / (p[i] + p[j]))
                .sum();
            next[i] = if denom > 0.0 { wi / denom } else { p[i] };
        }
        // fix the scale: geometric mean 1
        let g = next.iter().map(|x| x.ln()).sum::<f64>() / k as f64;
        next.iter_mut().for_each(|x| *x /= g.exp());
        let change = next
            .iter()
            .zip(&p)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        p = next;
        if change < 1e-12 {
            break;
        }
    }
    p.iter().map(|x| 400.0 * x.log10()).collect()
}

/// Verifier score of a response: 1 when its answer matches the gold one.
pub fn verify(response: &str, gold: &str) -> f64 {
    answer::check(response, gold).1 as u8 as f64
}

/// A chat model that compares two responses to an instruction.
pub struct PairwiseJudge {
    pub net: Transformer,
    pub tok: Tok,
    a_id: u32,
    b_id: u32,
}

impl PairwiseJudge {
    pub fn new(net: Transformer, tok: Tok) -> Result<PairwiseJudge> {
        let id = |s: &str| -> Result<u32> {
            let ids = tok.encode(s, false)?;
            ids.last().copied().ok_or_else(|| {
                crate::error::Error::invalid(
                    "judge",
                    format!("the tokenizer encodes {s:?} to nothing"),
                )
            })
        };
        Ok(PairwiseJudge {
            a_id: id("A")?,
            b_id: id("B")?,
            net,
            tok,
        })
    }

    fn prompt(&self, instruction: &str, first: &str, second: &str) -> Result<Vec<u32>> {
        let text = format!(
            "Compare two responses to the same request and say which one is better: more correct, more helpful, clearer.\n\nRequest:\n{instruction}\n\nResponse A:\n{first}\n\nResponse B:\n{second}\n\nReply with one letter, A or B."
        );
        let msgs = [Message::new("user", &text)];
        match self.tok.chat_template {
            Some(_) => self.tok.encode_chat(&msgs, true),
            None => self.tok.encode(&format!("{text}\nBetter response:"), false),
        }
    }

    /// ELO scores of `responses` to `instruction`: every pair judged in both orders (the
    /// verdicts' prompts in one batched pass, [`crate::model::engine::last_logits`]);
    /// a verdict is log P(A) - log P(B) for the next token, and a pair whose two verdicts
    /// disagree (position bias) is a tie.
    pub fn elo(&self, instruction: &str, responses: &[String]) -> Result<Vec<f64>> {
        let k = responses.len();
        let mut pairs = Vec::new();
        let mut prompts = Vec::new();
        for i in 0..k {
            for j in i + 1..k {
                pairs.push((i, j));
                prompts.push(self.prompt(instruction, &responses[i], &responses[j])?);
                prompts.push(self.prompt(instruction, &responses[j], &responses[i])?);
            }
        }
        let v = self.net.cfg.vocab_size;
        let lg = crate::model::engine::last_logits(&self.net, &prompts)?;
        let pref = |n: usize| {
            lg[n * v + self.a_id as usize] as f64 - lg[n * v + self.b_id as usize] as f64
        };
        let mut wins = vec![vec![0.0; k]; k];
        for (n, &(i, j)) in pairs.iter().enumerate() {
            // ij > 0: i (shown as A) preferred; ji > 0: j (shown as A) preferred
            match (pref(2 * n) > 0.0, pref(2 * n + 1) > 0.0) {
                (true, false) => wins[i][j] += 1.0,
                (false, true) => wins[j][i] += 1.0,
                _ => {
                    wins[i][j] += 0.5;
                    wins[j][i] += 0.5;
                }
            }
        }
        Ok(bradley_terry_elo(&wins))
    }
}

#[cfg(test)]
mod tests {
    use super::bradley_terry_elo;

    #[test]
    fn elo_known_answer_two_players() {
        // i beats j 3 times out of 4 (with a tiny symmetric prior): the MLE strength ratio
        // is (3 + e) / (1 + e) with e = 0.05, so the ELO gap is 400 log10 of that ratio
        let e: f64 = 0.1 / 2.0;
        let elo = bradley_terry_elo(&[vec![0.0, 3.0], vec![1.0, 0.0]]);
        let want: f64 = 400.0 * ((3.0 + e) / (1.0 + e)).log10();
        assert!(
            (elo[0] - elo[1] - want).abs() < 1e-6,
            "{elo:?} vs gap {want}"
        );
        assert!((elo[0] + elo[1]).abs() < 1e-9, "centred");
    }

    #[test]
    fn elo_orders_a_transitive_tournament() {
        // 0 beats everyone, 1 beats 2, 2 beats nobody
        let w = vec![
            vec![0.0, 2.0, 2.0],
            vec![0.0, 0.0, 2.0],
            vec![0.0, 0.0, 0.0],
        ];
        let elo = bradley_terry_elo(&w);
        assert!(elo[0] > elo[1] && elo[1] > elo[2], "{elo:?}");
        // all ties: everyone equal
        let t = vec![vec![0.0, 0.5], vec![0.5, 0.0]];
        let elo = bradley_terry_elo(&t);
        assert!((elo[0] - elo[1]).abs() < 1e-9);
    }
}
