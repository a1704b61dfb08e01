//! What a training run shows and reports, shared by the trainer and the reference-cache
//! builder: the progress bar and the summary of a finished run.

use std::path::PathBuf;

use super::args::TrainArgs;

/// What a finished run reports.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: usize,
    pub final_loss: f64,
    /// Reference forward passes run (0 after a cache hit).
    pub ref_forwards: usize,
    pub cache: Option<String>,
    pub out: PathBuf,
}

/// A progress bar labelled `what` over `len` items (hidden with `--quiet`).
pub(crate) fn progress(args: &TrainArgs, len: u64, what: &str) -> indicatif::ProgressBar {
    if args.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}
