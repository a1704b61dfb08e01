//! `ponder sft` and `ponder dpo`: train, then report the summary.

use ponder::train::trainer::{Mode, TrainArgs};
use ponder::Result;

pub(crate) fn train_cmd(mode: Mode, a: TrainArgs) -> Result<bool> {
    a.fields.install()?;
    let s = ponder::train::trainer::train(mode, &a)?;
    if !ponder::dist::is_root() {
        return Ok(true);
    }
    eprintln!(
        "done: {} steps, final loss {:.6}, reference forwards {}{}",
        s.steps,
        s.final_loss,
        s.ref_forwards,
        s.cache
            .map(|c| format!(", reference cache {c}"))
            .unwrap_or_default()
    );
    Ok(true)
}
