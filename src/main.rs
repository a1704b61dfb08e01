//! The `ponder` command line: thin parsing over the library.

/// `println!` that returns an error instead of panicking when stdout fails (a closed pipe,
/// a full disk). A broken pipe ends the program quietly (see `main`).
/// Of several MPI ranks, rank 0 alone prints (the others ran the same command).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if ponder::dist::is_root() {
            writeln!(std::io::stdout(), $($t)*).map_err(|e| ponder::Error::io("stdout", e))?
        }
    }};
}
/// `print!` with the same error handling as `outln!`.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if ponder::dist::is_root() {
            write!(std::io::stdout(), $($t)*).map_err(|e| ponder::Error::io("stdout", e))?
        }
    }};
}

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ponder::train::trainer::{Mode, TrainArgs};
use ponder::{Error, Result};

use cli::bench::{bench_cmd, BenchCmd};
use cli::info::info_cmd;
use cli::model::{compare_cmd, generate_cmd, logits_cmd, save_cmd, GenerateArgs};
use cli::recipes::*;
use cli::train::train_cmd;
use cli::workbench::*;

#[derive(Parser)]
#[command(
    name = "ponder",
    version,
    about = "A pure-Rust ML engine for preference-optimised reasoning models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the chosen device (and why), its limits and features, and self-check a few
    /// GPU kernels against the CPU reference.
    Info {
        /// cpu, gpu or auto (default: $PONDER_DEVICE, else auto)
        #[arg(long)]
        device: Option<String>,
    },
    /// Print a model's logits for token ids as JSON {"shape":[T,V],"logits":[...]}.
    Logits {
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids, e.g. 3,17,42
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
        #[arg(long)]
        device: Option<String>,
    },
    /// Compare a model's logits with a reference dump (models/reference/dump_logits.py):
    /// max |diff|, mean KL and top-1 agreement per position.
    Compare {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        reference: PathBuf,
        #[arg(long)]
        device: Option<String>,
        /// Fail (exit 1) when the max |diff| is above this.
        #[arg(long)]
        tol: Option<f64>,
    },
    /// Sample continuations with a KV cache.
    Generate(GenerateArgs),
    /// Write the model (a directory or a .gguf file) out as a Hugging Face directory, or,
    /// when --out ends in .gguf, as one GGUF file for llama.cpp (weights in --dtype; q8_0
    /// only for GGUF).
    Save {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: cli::model::SaveType,
    },
    /// Supervised fine-tuning on {"prompt","completion"} or {"messages"} JSONL.
    /// `--config FILE.toml` supplies any of these flags (keys = flag names).
    #[command(args_override_self = true)]
    Sft(TrainArgs),
    /// DPO-family preference optimisation on {"prompt","chosen","rejected"} JSONL.
    /// `--config FILE.toml` supplies any of these flags (keys = flag names).
    #[command(args_override_self = true)]
    Dpo(TrainArgs),
    /// Score a model (or another engine's predictions) on {"prompt"|"question","answer"}
    /// JSONL: accuracy, pass@K, mean completion tokens, parse failures.
    Eval(EvalArgs),
    /// Tokenizers.
    Tokenizer {
        #[command(subcommand)]
        what: TokenizerCmd,
    },
    /// A new model with random weights (std 0.02) from a config.json, with a tokenizer's
    /// files beside it, saved as a Hugging Face directory. `vocab_size` and
    /// `eos_token_id` default to the tokenizer's.
    Init {
        /// config.json of a Llama or Qwen2 model.
        #[arg(long)]
        config: PathBuf,
        /// Directory with tokenizer.json (and tokenizer_config.json).
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// DPO-augmented self-training (Wang et al. 2024), or plain self-training with
    /// --no-dpo: sample, check answers, DPO on correct x wrong, SFT from the base on the
    /// correct ones, in rounds. Data: {"prompt"|"question", "answer", "completion"} JSONL
    /// (completion = gold rationale; a GSM8K-style answer field also serves).
    SelfTrain(SelfTrainArgs),
    /// Thinking Preference Optimization (Yang et al. 2025): DPO from a long-CoT SFT model
    /// with its long answers chosen over short ones (sampled from --short-model or read
    /// from --short-data).
    Thinkpo(ThinkPoArgs),
    /// Thought Preference Optimization (Wu et al. 2024): sample thought + response, a
    /// judge scores the response only, best vs worst under a length penalty, DPO, rounds.
    Tpo(TpoArgs),
    /// The three recipes on the bundled tiny models and the synthetic task, on the CPU:
    /// SFT -> self-training and DPO-augmented self-training; SFT (long CoT) -> ThinkPO;
    /// SFT -> TPO. Prints the table and writes OUT/summary.json and plots.
    Demo {
        /// Output directory, new or empty (default: runs/demo, or runs/demo-N when that
        /// holds an earlier run; a run is never moved or deleted).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "models/ponder-tiny")]
        models: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rounds of self-training, DPO-ST and TPO.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Samples per question in self-training.
        #[arg(long, default_value_t = 4)]
        k: usize,
        /// Training questions with a gold rationale / with an answer only.
        #[arg(long, default_value_t = 300)]
        labelled: usize,
        #[arg(long, default_value_t = 300)]
        unlabelled: usize,
        /// Held-out questions evaluated (at most 250).
        #[arg(long, default_value_t = 250)]
        test_questions: usize,
        #[arg(long, default_value_t = 400)]
        thinkpo_questions: usize,
        /// TPO instructions per round.
        #[arg(long, default_value_t = 600)]
        tpo_questions: usize,
        #[arg(long)]
        quiet: bool,
    },
    /// Make data sets.
    Data {
        #[command(subcommand)]
        what: DataCmd,
    },
    /// Time a kernel or a model: median of repeated runs after a warm-up.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

/// `ponder sft|dpo --config FILE.toml ...`: the file's keys become flags placed before the
/// command line's own, so explicit flags win.
fn expand_config(argv: Vec<String>) -> Result<Vec<String>> {
    if argv.len() < 2 || !matches!(argv[1].as_str(), "sft" | "dpo") {
        return Ok(argv);
    }
    let mut rest = Vec::new();
    let mut config = None;
    let mut it = argv[2..].iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            config = Some(
                it.next()
                    .cloned()
                    .ok_or_else(|| Error::invalid("config", "--config needs a file"))?,
            );
        } else if let Some(v) = a.strip_prefix("--config=") {
            config = Some(v.to_string());
        } else {
            rest.push(a.clone());
        }
    }
    let mut out = argv[..2].to_vec();
    if let Some(c) = config {
        // a flag on the command line also silences the file's keys that clap says
        // conflict with it (e.g. --steps silences epochs)
        let mut cli = <Cli as clap::CommandFactory>::command();
        cli.build();
        let sub = cli
            .find_subcommand(&argv[1])
            .expect("sft and dpo are subcommands");
        let given = |long: &str| {
            rest.iter()
                .any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")))
        };
        let from_file = ponder::train::trainer::config_to_args(std::path::Path::new(&c))?;
        out.extend(from_file.into_iter().filter(|a| {
            let long = a.trim_start_matches("--").split('=').next().unwrap_or("");
            let Some(arg) = sub.get_arguments().find(|x| x.get_long() == Some(long)) else {
                return true;
            };
            // clap records a conflict on the argument that declares it: look both ways
            let clash = |x: &clap::Arg, y: &clap::Arg| {
                sub.get_arg_conflicts_with(x)
                    .iter()
                    .any(|c| c.get_id() == y.get_id())
            };
            !sub.get_arguments().any(|other| {
                other.get_long().is_some_and(given) && (clash(arg, other) || clash(other, arg))
            })
        }));
    }
    out.extend(rest);
    Ok(out)
}

#[global_allocator]
static ALLOC: ponder::backend::cpu::allocator::Aligned64 =
    ponder::backend::cpu::allocator::Aligned64;

fn main() -> ExitCode {
    ponder::backend::cpu::allocator::keep_freed_memory();
    let argv = match expand_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    // one of several MPI ranks, or alone; MPI is finalised when this drops
    let _mpi = match ponder::dist::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = ponder::backend::cpu::threads::on_worker(move || match cli.cmd {
        Cmd::Info { device } => info_cmd(device),
        Cmd::Logits { model, ids, device } => logits_cmd(model, ids, device),
        Cmd::Compare {
            model,
            reference,
            device,
            tol,
        } => compare_cmd(model, reference, device, tol),
        Cmd::Generate(a) => generate_cmd(a),
        Cmd::Save { model, out, dtype } => save_cmd(model, out, dtype),
        Cmd::Sft(a) => train_cmd(Mode::Sft, a),
        Cmd::Dpo(a) => train_cmd(Mode::Dpo, a),
        Cmd::Bench { what } => bench_cmd(what),
        Cmd::Eval(a) => eval_cmd(a),
        Cmd::Data { what } => data_cmd(what),
        Cmd::Tokenizer { what } => tokenizer_cmd(what),
        Cmd::SelfTrain(a) => self_train_cmd(a),
        Cmd::Thinkpo(a) => thinkpo_cmd(a),
        Cmd::Tpo(a) => tpo_cmd(a),
        Cmd::Demo {
            out,
            models,
            seed,
            rounds,
            k,
            labelled,
            unlabelled,
            test_questions,
            thinkpo_questions,
            tpo_questions,
            quiet,
        } => demo_cmd(ponder::recipes::demo::DemoOpts {
            out: out.unwrap_or_else(|| {
                ponder::dist::root_path(ponder::recipes::demo::next_free_out(std::path::Path::new(
                    "runs/demo",
                )))
            }),
            models,
            seed,
            rounds,
            k,
            labelled,
            unlabelled,
            test: test_questions,
            thinkpo_questions,
            tpo_questions,
            quiet,
        }),
        Cmd::Init {
            config,
            tokenizer,
            out,
            seed,
        } => init_cmd(config, tokenizer, out, seed),
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // `ponder ... | head`: the reader left; that is not an error worth a message
        Err(ponder::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) if ponder::dist::size() > 1 => {
            // the other ranks may be waiting for this one in a collective: end them all
            eprintln!("error: rank {}: {e}", ponder::dist::rank());
            ponder::dist::abort(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
