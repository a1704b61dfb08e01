//! The recipe commands: self-train, thinkpo, tpo and demo (parse, call the library, print).

use std::path::PathBuf;

use ponder::{Error, Result};

use super::device;

#[derive(clap::Args)]
pub(crate) struct SelfTrainArgs {
    /// Column names of data whose fields are not named as ponder's.
    #[command(flatten)]
    pub(crate) fields: ponder::train::data::FieldArgs,
    /// The SFT model round 1 starts from.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The model SFT is retrained from each round (default: --model).
    #[arg(long)]
    pub(crate) base: Option<PathBuf>,
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Held-out questions evaluated after every round.
    #[arg(long)]
    pub(crate) eval_data: Option<PathBuf>,
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Plain self-training (the paper's baseline): no DPO step.
    #[arg(long)]
    pub(crate) no_dpo: bool,
    /// Ask each question as a user message in the model's chat template (instruct models).
    #[arg(long)]
    pub(crate) chat: bool,
    /// Samples per question.
    #[arg(long, default_value_t = 5)]
    pub(crate) k: usize,
    #[arg(long, default_value_t = 0.7)]
    pub(crate) temperature: f32,
    #[arg(long, default_value_t = 300)]
    pub(crate) max_new_tokens: usize,
    /// Sample without calculator decoding (on by default, as in the paper).
    #[arg(long)]
    pub(crate) no_calculator: bool,
    #[arg(long, default_value_t = 0.1)]
    pub(crate) beta: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub(crate) dpo_lr: f64,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) dpo_epochs: f64,
    #[arg(long, default_value_t = 1e-5)]
    pub(crate) sft_lr: f64,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) sft_epochs: f64,
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// Use only the first N training questions.
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Evaluate on only the first N held-out questions.
    #[arg(long)]
    pub(crate) eval_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Continue after the last finished round in --out.
    #[arg(long)]
    pub(crate) resume: bool,
    #[arg(long)]
    pub(crate) device: Option<String>,
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(clap::Args)]
pub(crate) struct ThinkPoArgs {
    /// Column names of data whose fields are not named as ponder's.
    #[command(flatten)]
    pub(crate) fields: ponder::train::data::FieldArgs,
    /// The long-CoT SFT model (policy and reference).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// {"prompt"|"question", "completion" (the long answer), "answer"} JSONL.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Sample the short answers from this short-CoT model (T 0.7, top-p 0.9).
    #[arg(
        long,
        conflicts_with = "short_data",
        required_unless_present = "short_data"
    )]
    pub(crate) short_model: Option<PathBuf>,
    /// Or read them: {"prompt"|"question", "completion"} JSONL, matched by prompt.
    #[arg(long)]
    pub(crate) short_data: Option<PathBuf>,
    #[arg(long)]
    pub(crate) eval_data: Option<PathBuf>,
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Also keep pairs whose short answer is well-formed but wrong.
    #[arg(long)]
    pub(crate) keep_format_correct: bool,
    /// Keep pairs whose long answer is at most this many tokens longer than the short one.
    #[arg(long)]
    pub(crate) max_length_gap: Option<usize>,
    #[arg(long, default_value_t = 0.01)]
    pub(crate) beta: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub(crate) lr: f64,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) epochs: f64,
    /// Add this times the NLL of the chosen (long) answers to the DPO loss (TRL's
    /// rpo_alpha); off by default, as in the paper.
    #[arg(long)]
    pub(crate) rpo_alpha: Option<f64>,
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = 300)]
    pub(crate) max_new_tokens: usize,
    /// Calculator decoding when sampling short answers and evaluating.
    #[arg(long)]
    pub(crate) calculator: bool,
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    #[arg(long)]
    pub(crate) eval_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    #[arg(long)]
    pub(crate) device: Option<String>,
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(clap::Args)]
pub(crate) struct TpoArgs {
    /// Column names of data whose fields are not named as ponder's.
    #[command(flatten)]
    pub(crate) fields: ponder::train::data::FieldArgs,
    /// The model to train (and sample from).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Instructions: {"prompt"|"question", "answer"?} JSONL (the verifier needs answer).
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Validation questions: a round's model is kept only if it does at least as well.
    #[arg(long)]
    pub(crate) val_data: Option<PathBuf>,
    #[arg(long)]
    pub(crate) eval_data: Option<PathBuf>,
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// generic ("Here is my thought process:" / "Here is my response:"), specific (<R>),
    /// answer-line (the response is the final `#### N` line), or a file holding
    /// `{instruction}` (then give --response-delimiter).
    #[arg(long, default_value = "generic")]
    pub(crate) template: String,
    /// Where a template file's response starts (only with --template FILE).
    #[arg(long)]
    pub(crate) response_delimiter: Option<String>,
    /// verifier (the answer checker against the gold answer), reward-model:DIR (a
    /// Qwen2/LlamaForSequenceClassification checkpoint scoring instruction + response), or
    /// pairwise:DIR (a chat model judging two responses in both orders).
    #[arg(long, default_value = "verifier")]
    pub(crate) judge: String,
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Fresh instructions per round.
    #[arg(long, default_value_t = 200)]
    pub(crate) per_round: usize,
    #[arg(long, default_value_t = 8)]
    pub(crate) k: usize,
    #[arg(long, default_value_t = 0.8)]
    pub(crate) temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    pub(crate) top_p: f32,
    #[arg(long, default_value_t = 300)]
    pub(crate) max_new_tokens: usize,
    /// Length penalty (default: the smallest that keeps chosen responses no longer than
    /// rejected ones).
    #[arg(long)]
    pub(crate) rho: Option<f64>,
    #[arg(long, default_value_t = 0.1)]
    pub(crate) beta: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub(crate) lr: f64,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) epochs_per_round: f64,
    /// Add this times the NLL of the chosen responses to the DPO loss (TRL's rpo_alpha);
    /// off by default, as in the paper.
    #[arg(long)]
    pub(crate) rpo_alpha: Option<f64>,
    #[arg(long, default_value_t = 8)]
    pub(crate) batch_size: usize,
    /// Calculator decoding while sampling and evaluating.
    #[arg(long)]
    pub(crate) calculator: bool,
    #[arg(long)]
    pub(crate) eval_limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    #[arg(long)]
    pub(crate) resume: bool,
    #[arg(long)]
    pub(crate) device: Option<String>,
    #[arg(long)]
    pub(crate) quiet: bool,
}

pub(crate) fn self_train_cmd(a: SelfTrainArgs) -> Result<bool> {
    a.fields.install()?;
    use ponder::recipes::self_train::{run, SelfTrainOpts};
    let d = SelfTrainOpts::default();
    let o = SelfTrainOpts {
        model: a.model,
        base: a.base,
        data: a.data,
        eval_data: a.eval_data,
        out: a.out,
        rounds: a.rounds,
        no_dpo: a.no_dpo,
        sampling: ponder::recipes::sample::SampleOpts {
            k: a.k,
            temperature: a.temperature,
            max_new_tokens: a.max_new_tokens,
            calculator: !a.no_calculator,
            seed: a.seed,
            ..d.sampling.clone()
        },
        dpo: ponder::train::fit::FitOpts {
            beta: a.beta,
            lr: a.dpo_lr,
            epochs: a.dpo_epochs,
            batch_size: a.batch_size,
            seed: a.seed,
            ..d.dpo.clone()
        },
        sft: ponder::train::fit::FitOpts {
            lr: a.sft_lr,
            epochs: a.sft_epochs,
            batch_size: a.batch_size,
            seed: a.seed,
            ..d.sft.clone()
        },
        limit: a.limit,
        eval_limit: a.eval_limit,
        eval_max_new_tokens: a.max_new_tokens,
        chat: a.chat,
        device: device(a.device)?,
        resume: a.resume,
        quiet: a.quiet,
        ..d
    };
    let s = run(&o)?;
    for (i, (acc, len)) in s.accuracy.iter().zip(&s.mean_tokens).enumerate() {
        outln!("round {}: accuracy {acc:.4}, mean tokens {len:.1}", i + 1);
    }
    outln!(
        "reference forwards saved by recorded log-probs: {}; final model: {}",
        s.reference_forwards_saved,
        s.final_model.display()
    );
    Ok(true)
}

pub(crate) fn thinkpo_cmd(a: ThinkPoArgs) -> Result<bool> {
    a.fields.install()?;
    use ponder::recipes::thinkpo::{run, ThinkPoOpts};
    let d = ThinkPoOpts::default();
    let o = ThinkPoOpts {
        model: a.model,
        data: a.data,
        short_model: a.short_model,
        short_data: a.short_data,
        eval_data: a.eval_data,
        out: a.out,
        keep_format_correct: a.keep_format_correct,
        max_length_gap: a.max_length_gap,
        sampling: ponder::recipes::sample::SampleOpts {
            max_new_tokens: a.max_new_tokens,
            seed: a.seed,
            calculator: a.calculator,
            ..d.sampling.clone()
        },
        dpo: ponder::train::fit::FitOpts {
            beta: a.beta,
            lr: a.lr,
            epochs: a.epochs,
            rpo_alpha: a.rpo_alpha,
            batch_size: a.batch_size,
            seed: a.seed,
            ..d.dpo.clone()
        },
        limit: a.limit,
        eval_limit: a.eval_limit,
        calculator: a.calculator,
        device: device(a.device)?,
        quiet: a.quiet,
        ..d
    };
    let s = run(&o)?;
    outln!(
        "pairs {} (mean chosen {:.1} tokens, rejected {:.1}); reference forwards {}",
        s.pairs,
        s.mean_chosen_tokens,
        s.mean_rejected_tokens,
        s.reference_forwards
    );
    if let (Some(b), Some(a)) = (s.before, s.after) {
        outln!("before: accuracy {:.4}, mean tokens {:.1}", b.0, b.1);
        outln!("after:  accuracy {:.4}, mean tokens {:.1}", a.0, a.1);
    }
    outln!("model: {}", s.model.display());
    Ok(true)
}

pub(crate) fn tpo_cmd(a: TpoArgs) -> Result<bool> {
    a.fields.install()?;
    use ponder::recipes::tpo::{run, JudgeKind, ThoughtTemplate, TpoOpts};
    let builtin = ["generic", "specific", "answer-line"];
    if let (Some(d), true) = (
        &a.response_delimiter,
        builtin.contains(&a.template.as_str()),
    ) {
        return Err(Error::invalid(
            "tpo",
            format!(
                "--response-delimiter {d:?} is for a template file; the built-in template `{}` has its own delimiter (omit the flag, or give --template FILE)",
                a.template
            ),
        ));
    }
    let template = match a.template.as_str() {
        "generic" => ThoughtTemplate::generic(),
        "specific" => ThoughtTemplate::specific(),
        "answer-line" => ThoughtTemplate::answer_line(),
        path => {
            let text = ponder::files::read_text_bounded(
                std::path::Path::new(path),
                ThoughtTemplate::MAX_BYTES,
                "a thought template",
            )?;
            if !text.contains("{instruction}") {
                return Err(Error::file(
                    path,
                    "a thought template must hold {instruction}",
                ));
            }
            let delim = a.response_delimiter.clone().ok_or_else(|| {
                Error::invalid("tpo", "a template file needs --response-delimiter")
            })?;
            ThoughtTemplate {
                text,
                response_delimiter: delim,
                keep_delimiter: false,
            }
        }
    };
    let judge = match a.judge.split_once(':') {
        None if a.judge == "verifier" => JudgeKind::Verifier,
        Some(("pairwise", dir)) => JudgeKind::Pairwise(PathBuf::from(dir)),
        Some(("reward-model", dir)) => JudgeKind::RewardModel(PathBuf::from(dir)),
        _ => {
            return Err(Error::invalid(
                "tpo",
                format!(
                    "unknown judge '{}': verifier, reward-model:DIR or pairwise:DIR",
                    a.judge
                ),
            ))
        }
    };
    let d = TpoOpts::default();
    let o = TpoOpts {
        model: a.model,
        data: a.data,
        val_data: a.val_data,
        eval_data: a.eval_data,
        out: a.out,
        template,
        judge,
        rounds: a.rounds,
        per_round: a.per_round,
        sampling: ponder::recipes::sample::SampleOpts {
            k: a.k,
            temperature: a.temperature,
            top_p: a.top_p,
            max_new_tokens: a.max_new_tokens,
            calculator: a.calculator,
            seed: a.seed,
            ..d.sampling.clone()
        },
        rho: a.rho,
        dpo: ponder::train::fit::FitOpts {
            beta: a.beta,
            lr: a.lr,
            epochs: a.epochs_per_round,
            rpo_alpha: a.rpo_alpha,
            batch_size: a.batch_size,
            seed: a.seed,
            ..d.dpo.clone()
        },
        eval_limit: a.eval_limit,
        eval_max_new_tokens: a.max_new_tokens,
        calculator: a.calculator,
        device: device(a.device)?,
        resume: a.resume,
        quiet: a.quiet,
        ..d
    };
    let s = run(&o)?;
    for r in &s.rounds {
        outln!("{}", serde_json::Value::Object(r.clone()));
    }
    outln!(
        "reference forwards saved by recorded log-probs: {}; model: {}",
        s.reference_forwards_saved,
        s.model.display()
    );
    Ok(true)
}

pub(crate) fn demo_cmd(o: ponder::recipes::demo::DemoOpts) -> Result<bool> {
    use ponder::recipes::demo::{run, table};
    let (rows, secs) = run(&o)?;
    out!("{}", table(&rows));
    outln!("{:.0} s; {}", secs, o.out.join("summary.json").display());
    Ok(true)
}
