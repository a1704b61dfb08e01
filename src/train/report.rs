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
    crate::util::progress_bar(len, what, args.quiet)
}
