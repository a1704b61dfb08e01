//! The `ponder` command line: thin parsing over the library.

/// `println!` that returns an error instead of panicking when stdout fails (a closed pipe,
/// a full disk). A broken pipe ends the program quietly (see `main`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($t)*).map_err(|e| ponder::Error::io("stdout", e))?
    }};
}
/// `print!` with the same error handling as `outln!`.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($t)*).map_err(|e| ponder::Error::io("stdout", e))?
    }};
}

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ponder::model::chat::Message;
use ponder::model::generate::SamplingParams;
use ponder::model::{LoadOpts, Model};
use ponder::train::trainer::{Mode, SaveDType, TrainArgs};
use ponder::{DType, Device, Error, Result};

use cli::recipes::*;
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
    /// Write the model back out as a Hugging Face directory (weights in --dtype).
    Save {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: SaveDType,
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

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (tokenised with the model's tokenizer).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Continuations to sample.
    #[arg(short = 'n', long = "num", default_value_t = 1)]
    n: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going past EOS ids.
    #[arg(long)]
    ignore_eos: bool,
    /// Stop once the continuation contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Calculator decoding: after an open annotation `<<expr=`, force the result and `>>`.
    #[arg(long)]
    calculator: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[arg(long)]
    device: Option<String>,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// f32 matmul C (M x N) = A (M x K) @ B (K x N).
    Matmul {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Time every GPU kernel of one more run with timestamp queries, and print the table.
        #[arg(long)]
        profile: bool,
        #[arg(long, default_value_t = 1024)]
        m: usize,
        #[arg(long, default_value_t = 1024)]
        n: usize,
        #[arg(long, default_value_t = 1024)]
        k: usize,
        /// B is the transpose of a row-major (N, K) weight (x @ W^T).
        #[arg(long)]
        weight_t: bool,
        #[arg(long, default_value_t = 7)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Fused causal attention, forward or forward+backward.
    Attention {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Time every GPU kernel of one more run with timestamp queries, and print the table.
        #[arg(long)]
        profile: bool,
        #[arg(long, default_value_t = 1)]
        b: usize,
        #[arg(long, default_value_t = 512)]
        t: usize,
        #[arg(long, default_value_t = 14)]
        heads: usize,
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Time the backward pass instead of the forward.
        #[arg(long)]
        backward: bool,
        #[arg(long, default_value_t = 5)]
        reps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Time DPO optimizer steps with the cached reference (default) or a live one.
    Dpo {
        #[arg(long, required_unless_present = "qwen_05b")]
        model: Option<PathBuf>,
        /// A random model shaped like Qwen2.5-0.5B (trained in f32).
        #[arg(long = "qwen-0.5b")]
        qwen_05b: bool,
        /// Run a frozen bf16 reference model in every step instead of cached log-probs.
        #[arg(long)]
        no_ref_cache: bool,
        #[arg(long, default_value_t = 2)]
        pairs: usize,
        #[arg(long, default_value_t = 64)]
        prompt_len: usize,
        #[arg(long, default_value_t = 64)]
        completion_len: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long)]
        device: Option<String>,
        /// Time every GPU kernel of one more run with timestamp queries, and print the table.
        #[arg(long)]
        profile: bool,
    },
    /// Prefill and generation tokens/s of a model directory, or of a random model with
    /// Qwen2.5-0.5B's shapes (--qwen-0.5b).
    Generate {
        #[arg(long, required_unless_present = "qwen_05b")]
        model: Option<PathBuf>,
        /// A random model shaped like Qwen2.5-0.5B (896 wide, 24 layers, 151936 vocab).
        #[arg(long = "qwen-0.5b")]
        qwen_05b: bool,
        /// Weight storage for the random model.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: SaveDType,
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batch: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        #[arg(long)]
        device: Option<String>,
        /// Time every GPU kernel of one more run with timestamp queries, and print the table.
        #[arg(long)]
        profile: bool,
        /// Write the random model to this directory (Hugging Face layout) and stop, so that
        /// loading it can be measured with --model.
        #[arg(long)]
        save_random: Option<PathBuf>,
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

fn main() -> ExitCode {
    let argv = match expand_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    let r = match cli.cmd {
        Cmd::Info { device } => info(device),
        Cmd::Logits { model, ids, device } => logits(model, ids, device),
        Cmd::Compare {
            model,
            reference,
            device,
            tol,
        } => compare(model, reference, device, tol),
        Cmd::Generate(a) => generate_cmd(a),
        Cmd::Save { model, out, dtype } => save(model, out, dtype),
        Cmd::Sft(a) => train(Mode::Sft, a),
        Cmd::Dpo(a) => train(Mode::Dpo, a),
        Cmd::Bench { what } => bench(what),
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
                ponder::recipes::demo::next_free_out(std::path::Path::new("runs/demo"))
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
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // `ponder ... | head`: the reader left; that is not an error worth a message
        Err(ponder::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn device(s: Option<String>) -> Result<Device> {
    match s {
        Some(s) => Device::parse(&s),
        None => Device::from_env(),
    }
}

fn frozen(dev: Device) -> LoadOpts {
    LoadOpts {
        device: dev,
        keep_16bit: true,
        trainable: false,
    }
}

fn info(dev: Option<String>) -> Result<bool> {
    let requested = dev
        .clone()
        .or_else(|| std::env::var("PONDER_DEVICE").ok())
        .unwrap_or_else(|| "auto".into());
    let dev = device(dev)?;
    outln!("ponder {}", env!("CARGO_PKG_VERSION"));
    outln!("device: {dev} (requested: {requested})");
    if dev == Device::Cpu && requested.trim().eq_ignore_ascii_case("auto") {
        if let Ok(ctx) = ponder::backend::gpu::context() {
            if ctx.is_software() {
                outln!(
                    "  auto chose the cpu: the only adapter, {}, is a software rasteriser, slower than the cpu loops (--device gpu uses it)",
                    ctx.info.name
                );
            }
        }
    }
    outln!("cpu: {} threads (rayon)", rayon::current_num_threads());
    match ponder::backend::gpu::context() {
        Ok(ctx) => {
            outln!("gpu adapter: {}", ctx.describe());
            outln!("  chosen because: {}", ctx.reason);
            for o in &ctx.others {
                outln!("  seen: {o}");
            }
            let l = &ctx.limits;
            outln!(
                "  max_storage_buffer_binding_size: {} MiB",
                l.max_storage_buffer_binding_size >> 20
            );
            outln!("  max_buffer_size: {} MiB", l.max_buffer_size >> 20);
            outln!(
                "  immediates (shape parameters without the uniform ring): {}",
                if ctx.features.contains(wgpu::Features::IMMEDIATES) {
                    format!("{} B", l.max_immediate_size)
                } else {
                    "not offered".into()
                }
            );
            outln!(
                "  max_compute_workgroup_storage_size: {} B",
                l.max_compute_workgroup_storage_size
            );
            outln!(
                "  max_compute_invocations_per_workgroup: {}",
                l.max_compute_invocations_per_workgroup
            );
            outln!(
                "  max_storage_buffers_per_shader_stage: {}",
                l.max_storage_buffers_per_shader_stage
            );
            outln!(
                "  shader-f16: {}, subgroups: {}",
                ctx.has_f16(),
                ctx.has_subgroups()
            );
            outln!(
                "  naga runtime checks: {}",
                if ponder::backend::gpu::shader_checks() {
                    "on (PONDER_SHADER_CHECKS=1)"
                } else {
                    "off (trusted kernels; PONDER_SHADER_CHECKS=1 turns them on)"
                }
            );
        }
        Err(e) => outln!("gpu: none ({e})"),
    }
    if dev == Device::Cpu {
        outln!("self-check: skipped (the cpu backend is the reference the gpu is checked against)");
        return Ok(true);
    }
    let checks = ponder::selfcheck::run()?;
    let mut ok = true;
    for c in &checks {
        outln!(
            "self-check {:<28} max |gpu - cpu| = {:.2e}  {}",
            c.name,
            c.max_diff,
            if c.pass { "ok" } else { "FAIL" }
        );
        ok &= c.pass;
    }
    outln!(
        "self-check: {}",
        if ok {
            "all kernels agree with the cpu reference"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}

fn logits(dir: PathBuf, ids: Vec<u32>, dev: Option<String>) -> Result<bool> {
    let m = Model::load(&dir, frozen(device(dev)?))?;
    let v = m.cfg.vocab_size;
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    let io = |e| Error::io("stdout", e);
    // streamed chunk by chunk: never a whole (T, V) logits tensor on the device
    write!(w, "{{\"shape\":[{},{v}],\"logits\":[", ids.len()).map_err(io)?;
    let mut first = true;
    m.net
        .logits_in_chunks(&ids, ponder::ops::lm_head::default_chunk(v), |_, rows| {
            for x in rows {
                let x = serde_json::to_string(&x)
                    .map_err(|e| Error::invalid("logits", e.to_string()))?;
                write!(w, "{}{x}", if first { "" } else { "," }).map_err(io)?;
                first = false;
            }
            Ok(())
        })?;
    writeln!(w, "]}}").map_err(io)?;
    Ok(true)
}

fn compare(
    dir: PathBuf,
    reference: PathBuf,
    dev: Option<String>,
    tol: Option<f64>,
) -> Result<bool> {
    let r = ponder::model::weights::open_file(&reference)?;
    for key in ["input_ids", "logits"] {
        if !r.contains(key) {
            return Err(Error::file(
                &reference,
                format!(
                    "tensor `{key}` missing (write the file with models/reference/dump_logits.py)"
                ),
            ));
        }
    }
    let ids = r.load_any("input_ids")?.to_vec_u32()?;
    let want = r.load_any("logits")?;
    let m = Model::load(&dir, frozen(device(dev)?))?;
    let v = m.cfg.vocab_size;
    if want.shape() != [ids.len(), v] {
        return Err(Error::file(
            &reference,
            format!(
                "logits have shape {:?}, expected [{}, {v}] for this model",
                want.shape(),
                ids.len()
            ),
        ));
    }
    let want = want.to_vec_f32()?;
    let mut diffs = Vec::with_capacity(ids.len());
    m.net
        .logits_in_chunks(&ids, ponder::ops::lm_head::default_chunk(v), |r0, got| {
            let n = got.len() / v;
            let w = &want[r0 * v..(r0 + n) * v];
            diffs.extend(ponder::model::compare::compare_logits(&got, w, v));
            Ok(())
        })?;
    outln!(
        "{:>4} {:>8} {:>12} {:>12} {:>6}",
        "pos",
        "token",
        "max|diff|",
        "KL(ref||us)",
        "top1"
    );
    let (mut worst, mut kl_sum, mut agree) = (0.0f64, 0.0f64, 0);
    for (t, p) in diffs.iter().enumerate() {
        let (d, kl, same) = (p.max_abs, p.kl, p.top1_agrees);
        outln!(
            "{t:>4} {:>8} {d:>12.3e} {kl:>12.3e} {:>6}",
            ids[t],
            if same { "yes" } else { "NO" }
        );
        worst = worst.max(d);
        kl_sum += kl;
        agree += same as usize;
    }
    outln!(
        "max |diff| {worst:.3e}; mean KL {:.3e}; top-1 agreement {agree}/{}",
        kl_sum / ids.len() as f64,
        ids.len()
    );
    Ok(tol.is_none_or(|t| worst <= t))
}

fn generate_cmd(a: GenerateArgs) -> Result<bool> {
    let m = Model::load(&a.model, frozen(device(a.device)?))?;
    let prompt: Vec<u32> = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => {
            let tok = m.tokenizer()?;
            if a.chat {
                tok.encode_chat(&[Message::new("user", text)], true)?
            } else {
                tok.encode(text, true)?
            }
        }
        (None, None) => return Err(Error::invalid("generate", "give --prompt or --prompt-ids")),
    };
    let tok = m.tok.as_ref();
    let p = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        ignore_eos: a.ignore_eos,
        // generation_config.json, the tokenizer's eos_token and config.json's eos_token_id
        eos_ids: {
            let mut e = tok.map(|t| t.eos_ids.clone()).unwrap_or_default();
            for id in &m.cfg.eos_token_ids {
                if !e.contains(id) {
                    e.push(*id);
                }
            }
            e
        },
        stop_strings: a.stop.clone(),
    };
    // text output for one sequence streams as tokens arrive
    let stream = a.format == Format::Text && a.n == 1 && tok.is_some();
    let mut dec = ponder::model::tokenizer::StreamDecoder::skipping_special();
    // a failed write (a closed pipe) is kept and reported once generation returns
    let mut write_err: Option<std::io::Error> = None;
    let mut on_token = |_row: usize, id: u32| {
        let (true, None, Some(t)) = (stream, &write_err, tok) else {
            return;
        };
        match dec.push(t, id) {
            Ok(new) if !new.is_empty() => {
                let mut so = std::io::stdout();
                if let Err(e) = so.write_all(new.as_bytes()).and_then(|_| so.flush()) {
                    write_err = Some(e);
                }
            }
            _ => {}
        }
    };
    let mut calc = tok.map(ponder::recipes::Calculator::new);
    let mut hook = |_: usize, text: &str| calc.as_mut().and_then(|c| c.force(text));
    let steer: Option<&mut ponder::model::generate::Steer<'_>> = if a.calculator {
        if tok.is_none() {
            return Err(Error::invalid(
                "generate",
                "--calculator needs the model's tokenizer",
            ));
        }
        Some(&mut hook)
    } else {
        None
    };
    let (seqs, stats) = ponder::model::generate::generate_steered(
        &m.net,
        &[prompt],
        a.n,
        &p,
        tok,
        &mut on_token,
        steer,
    )?;
    if let Some(e) = write_err {
        return Err(Error::io("stdout", e));
    }
    if stream {
        let full = tok
            .map(|t| t.decode(&seqs[0].ids, true))
            .transpose()?
            .unwrap_or_default();
        let shown = dec.text();
        if full.len() > shown.len() && full.starts_with(shown) {
            out!("{}", &full[shown.len()..]);
        }
        outln!();
    } else {
        for s in &seqs {
            let text = tok
                .map(|t| t.decode(&s.ids, true))
                .transpose()?
                .unwrap_or_default();
            match a.format {
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({"prompt": s.prompt, "sample": s.sample, "ids": s.ids, "text": text, "finish_reason": s.finish})
                ),
                Format::Text => outln!("--- sample {} ({:?}) ---\n{text}", s.sample, s.finish),
            }
        }
    }
    eprintln!("{}", stats.summary());
    Ok(true)
}

fn train(mode: Mode, a: TrainArgs) -> Result<bool> {
    let s = ponder::train::trainer::train(mode, &a)?;
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

fn save(dir: PathBuf, out: PathBuf, dtype: SaveDType) -> Result<bool> {
    let m = Model::load(
        &dir,
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )?;
    let _lock = ponder::files::claim_out_dir(&out, "save")?;
    ponder::model::save::save_model(&m.net, Some(&dir), &out, dtype.dtype())?;
    eprintln!(
        "saved {} ({} parameters) to {}",
        dir.display(),
        m.net.num_parameters(),
        out.display()
    );
    Ok(true)
}

fn bench(what: BenchCmd) -> Result<bool> {
    let profile = match &what {
        BenchCmd::Matmul { profile, .. }
        | BenchCmd::Attention { profile, .. }
        | BenchCmd::Dpo { profile, .. }
        | BenchCmd::Generate { profile, .. } => *profile,
    };
    ponder::bench::set_profile(profile);
    let print_profile = || -> Result<()> {
        if let Some(t) = ponder::bench::take_profile() {
            outln!("{t}");
        }
        Ok(())
    };
    let r = match what {
        BenchCmd::Matmul {
            device: d,
            m,
            n,
            k,
            weight_t,
            reps,
            warmup,
            ..
        } => ponder::bench::matmul(Device::parse(&d)?, m, n, k, weight_t, warmup, reps)?,
        BenchCmd::Attention {
            device: d,
            b,
            t,
            heads,
            kv_heads,
            head_dim,
            backward,
            reps,
            warmup,
            ..
        } => ponder::bench::attention(
            Device::parse(&d)?,
            b,
            t,
            heads,
            kv_heads,
            head_dim,
            backward,
            warmup,
            reps,
        )?,
        BenchCmd::Dpo {
            model,
            qwen_05b,
            no_ref_cache,
            pairs,
            prompt_len,
            completion_len,
            steps,
            device: d,
            ..
        } => {
            let dev = device(d)?;
            let (policy, reference, name) = if qwen_05b {
                let cfg = ponder::model::Config::from_json(
                    std::path::Path::new("<qwen2.5-0.5b shape>"),
                    ponder::bench::qwen25_05b_config(),
                )?;
                let p = ponder::model::Transformer::into_trainable(
                    ponder::model::Transformer::random(&cfg, dev, DType::F32, 7)?,
                )?;
                let r = if no_ref_cache {
                    Some(ponder::model::Transformer::random(
                        &cfg,
                        dev,
                        DType::BF16,
                        8,
                    )?)
                } else {
                    None
                };
                (p, r, "random Qwen2.5-0.5B-shaped model".to_string())
            } else {
                let dir = model.expect("clap requires --model");
                let p = Model::load(
                    &dir,
                    LoadOpts {
                        device: dev,
                        keep_16bit: false,
                        trainable: true,
                    },
                )?
                .net;
                let r = if no_ref_cache {
                    Some(Model::load(&dir, frozen(dev))?.net)
                } else {
                    None
                };
                (p, r, dir.display().to_string())
            };
            let r = ponder::bench::dpo_step(
                policy,
                reference,
                pairs,
                prompt_len,
                completion_len,
                steps,
            )?;
            outln!(
                "dpo step on {dev}, {name}, reference {}: median {:.3}s per step, {} tokens/step = {:.1} tokens/s, peak RSS {:.0} MiB",
                if no_ref_cache { "live (bf16 model each step)" } else { "cached log-probs" },
                r.median_step_s,
                r.tokens_per_step,
                r.tokens_per_step as f64 / r.median_step_s,
                r.peak_rss_mib
            );
            print_profile()?;
            return Ok(true);
        }
        BenchCmd::Generate {
            model,
            qwen_05b,
            dtype,
            batch,
            prompt_len,
            new_tokens,
            device: d,
            save_random,
            ..
        } => {
            let dev = device(d)?;
            let t0 = std::time::Instant::now();
            let (net, name) = if qwen_05b {
                let cfg = ponder::model::Config::from_json(
                    std::path::Path::new("<qwen2.5-0.5b shape>"),
                    ponder::bench::qwen25_05b_config(),
                )?;
                (
                    ponder::model::Transformer::random(&cfg, dev, dtype.dtype(), 7)?,
                    format!(
                        "random Qwen2.5-0.5B-shaped model ({:?} weights)",
                        dtype.dtype()
                    ),
                )
            } else {
                let dir = model.expect("clap requires --model");
                let name = dir.display().to_string();
                (Model::load(&dir, frozen(dev))?.net, name)
            };
            outln!(
                "{name}: {} parameters, loaded in {:.2}s, peak RSS {:.0} MiB",
                net.num_parameters(),
                t0.elapsed().as_secs_f64(),
                ponder::bench::peak_rss_mib().unwrap_or(f64::NAN)
            );
            if let Some(out) = save_random {
                ponder::model::save::save_model(&net, None, &out, dtype.dtype())?;
                outln!("wrote {}", out.display());
                return Ok(true);
            }
            for b in batch {
                let s = ponder::bench::generation(&net, b, prompt_len, new_tokens)?;
                outln!("batch {b} on {dev}: {}", s.summary());
            }
            outln!(
                "peak RSS {:.0} MiB",
                ponder::bench::peak_rss_mib().unwrap_or(f64::NAN)
            );
            print_profile()?;
            return Ok(true);
        }
    };
    outln!("{r}");
    print_profile()?;
    if r.device == Device::Gpu {
        let ctx = ponder::backend::gpu::context()?;
        if ctx.info.device_type == wgpu::DeviceType::Cpu {
            outln!(
                "note: {} is a software rasteriser; its figures are for reference only",
                ctx.info.name
            );
        }
    }
    Ok(true)
}
