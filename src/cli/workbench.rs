//! The workbench commands: eval, data synth, tokenizer train and init (parse, call the
//! library, print).

use std::path::PathBuf;

use clap::Subcommand;
use ponder::model::Model;
use ponder::{DType, Device, Error, Result};

use super::{device, frozen, Format};

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// Column names of data whose fields are not named as ponder's.
    #[command(flatten)]
    pub(crate) fields: ponder::train::data::FieldArgs,
    /// {"prompt"|"question", "answer"} JSONL (a GSM8K-style answer field yields its `#### N`).
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Generate the completions with this model.
    #[arg(
        long,
        conflicts_with = "predictions",
        required_unless_present = "predictions"
    )]
    pub(crate) model: Option<PathBuf>,
    /// Score {"completion"} JSONL instead (line i answers data line i).
    #[arg(long)]
    pub(crate) predictions: Option<PathBuf>,
    /// Count --predictions' lengths in this tokenizer's tokens.
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Calculator decoding (see `generate --calculator`).
    #[arg(long)]
    pub(crate) calculator: bool,
    /// Samples per question (reports pass@K).
    #[arg(long, default_value_t = 1)]
    pub(crate) samples: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    #[arg(long, default_value_t = 256)]
    pub(crate) max_new_tokens: usize,
    /// Wrap each prompt as a user message in the chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// Evaluate only the first N questions (N >= 1).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) limit: Option<usize>,
    /// Questions per generation batch.
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// One line per completion: {"index","completion","extracted","gold","correct",...}.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) format: Format,
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Subcommand)]
pub(crate) enum TokenizerCmd {
    /// Train a byte-level BPE on text files (one document per line of .txt, or the
    /// prompt+completion of each .jsonl line) with the tokenizers crate's trainer.
    Train {
        /// Text or JSONL files.
        #[arg(long, required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 512)]
        vocab_size: usize,
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Let digits merge into multi-digit tokens (GPT-2 / Llama 3 style); by default
        /// every digit is its own token (Qwen2 style).
        #[arg(long)]
        merge_digits: bool,
        /// model_max_length written to tokenizer_config.json.
        #[arg(long, default_value_t = 1024)]
        model_max_length: usize,
    },
}

#[derive(Subcommand)]
pub(crate) enum DataCmd {
    /// Multi-step arithmetic word problems with short (GSM8K-style, calculator
    /// annotations) and long (column-by-column) gold rationales: train/dev/test JSONL.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 2000)]
        n_train: usize,
        #[arg(long, default_value_t = 200)]
        n_dev: usize,
        #[arg(long, default_value_t = 250)]
        n_test: usize,
        /// Operations per problem, at least (1-6).
        #[arg(long, default_value_t = 1)]
        min_steps: usize,
        /// Operations per problem, at most (1-6).
        #[arg(long, default_value_t = 4)]
        max_steps: usize,
        #[arg(long, default_value_t = 99)]
        max_start: u64,
        /// Largest number added or subtracted.
        #[arg(long, default_value_t = 99)]
        max_operand: u64,
        /// Largest multiplier or divisor (2-9).
        #[arg(long, default_value_t = 9)]
        max_factor: u64,
        /// Largest intermediate value.
        #[arg(long, default_value_t = 999)]
        max_value: u64,
    },
}

pub(crate) fn eval_cmd(a: EvalArgs) -> Result<bool> {
    a.fields.install()?;
    use ponder::recipes::{data, eval};
    if let Some(out) = &a.out {
        let mut inputs = vec![("--data", a.data.as_path())];
        if let Some(p) = &a.predictions {
            inputs.push(("--predictions", p.as_path()));
        }
        ponder::files::check_not_input(out, &inputs)?;
        let mut dirs = Vec::new();
        if let Some(m) = &a.model {
            dirs.push(("--model", m.as_path()));
        }
        if let Some(t) = &a.tokenizer {
            dirs.push(("--tokenizer", t.as_path()));
        }
        ponder::files::check_not_inside(out, &dirs)?;
    }
    let mut examples = data::read_examples(&a.data)?;
    if let Some(n) = a.limit {
        examples.truncate(n);
    }
    let (report, recs) = match (&a.model, &a.predictions) {
        (_, Some(pred)) => {
            let preds = data::read_predictions(pred)?;
            let preds: Vec<String> = preds.into_iter().take(examples.len()).collect();
            let tok = a
                .tokenizer
                .as_deref()
                .map(ponder::model::Tok::load)
                .transpose()?;
            eval::score_predictions(&examples, &preds, tok.as_ref())?
        }
        (Some(dir), None) => {
            let m = Model::load(dir, frozen(device(a.device.clone())?))?;
            let tok = m.tokenizer()?;
            let opts = eval::EvalOpts {
                samples: a.samples,
                temperature: a.temperature,
                top_p: a.top_p,
                max_new_tokens: a.max_new_tokens,
                calculator: a.calculator,
                chat: a.chat,
                seed: a.seed,
                batch: a.batch,
            };
            let bar = ponder::util::progress_bar(examples.len() as u64, "eval", a.quiet);
            let r = eval::evaluate(&m.net, tok, &examples, &opts, &mut |d| {
                bar.set_position(d as u64)
            })?;
            bar.finish_and_clear();
            r
        }
        (None, None) => return Err(Error::invalid("eval", "give --model or --predictions")),
    };
    if let Some(out) = &a.out {
        data::write_jsonl(out, &eval::record_rows(&recs))?;
    }
    match a.format {
        Format::Json => outln!("{}", report.to_json()),
        Format::Text => out!("{}", report.table()),
    }
    Ok(true)
}

pub(crate) fn tokenizer_cmd(what: TokenizerCmd) -> Result<bool> {
    let TokenizerCmd::Train {
        files,
        out,
        vocab_size,
        min_frequency,
        merge_digits,
        model_max_length,
    } = what;
    let mut texts: Vec<String> = Vec::new();
    for f in &files {
        if f.extension().is_some_and(|e| e == "jsonl") {
            for (_, o) in ponder::train::data::read_jsonl(f)? {
                let get = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                let t = format!("{}{}{}", get("prompt"), get("completion"), get("text"));
                if !t.is_empty() {
                    texts.push(t);
                }
            }
        } else {
            let t = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            texts.extend(t.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }
    if texts.is_empty() {
        return Err(Error::invalid("tokenizer train", "the files hold no text"));
    }
    let opts = ponder::model::tokenizer_train::BpeOpts {
        vocab_size,
        min_frequency,
        split_digits: !merge_digits,
    };
    let n = texts.len();
    let _lock = ponder::files::claim_out_dir(&out, "tokenizer train")?;
    let tok = ponder::model::tokenizer_train::train_bpe(texts, &opts)?;
    ponder::model::tokenizer_train::save_dir(&tok, &out, model_max_length)?;
    outln!(
        "trained a byte-level BPE of {} tokens on {n} texts: {}",
        tok.get_vocab_size(true),
        out.join("tokenizer.json").display()
    );
    Ok(true)
}

pub(crate) fn init_cmd(
    config: PathBuf,
    tokenizer: PathBuf,
    out: PathBuf,
    seed: u64,
) -> Result<bool> {
    let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
    let mut raw: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&config, format!("not valid JSON: {e}")))?;
    let tok = ponder::model::Tok::load(&tokenizer)?;
    let tv = tok.vocab_size();
    if let Some(o) = raw.as_object_mut() {
        o.entry("vocab_size").or_insert(tv.into());
        if let (false, Some((_, eos))) = (o.contains_key("eos_token_id"), &tok.eos) {
            o.insert("eos_token_id".into(), (*eos).into());
        }
    }
    let cfg = ponder::model::Config::from_json(&config, raw)?;
    if cfg.vocab_size < tv {
        return Err(Error::file(
            &config,
            format!(
                "vocab_size {} is smaller than the tokenizer's {tv} tokens",
                cfg.vocab_size
            ),
        ));
    }
    // the whole model must fit before one tensor is allocated: each dimension may be in
    // range while their product is not
    let bytes: u128 = ponder::model::Transformer::expected(&cfg)
        .iter()
        .map(|(_, shape, _)| 4 * shape.iter().map(|&d| d as u128).product::<u128>())
        .sum();
    let avail = ponder::train::memory::available().unwrap_or(u64::MAX) as u128;
    if bytes > avail {
        return Err(Error::file(
            &config,
            format!(
                "this model needs {:.1} GiB of f32 weights and {:.1} GiB is available; choose smaller sizes",
                bytes as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            ),
        ));
    }
    let net = ponder::model::Transformer::random(&cfg, Device::Cpu, DType::F32, seed)?;
    let _lock = ponder::files::claim_out_dir(&out, "init")?;
    ponder::model::save::save_model(&net, Some(&tokenizer), &out, DType::F32)?;
    outln!(
        "initialised a {}-parameter model (seed {seed}): {}",
        net.num_parameters(),
        out.display()
    );
    Ok(true)
}

pub(crate) fn data_cmd(what: DataCmd) -> Result<bool> {
    let DataCmd::Synth {
        out,
        seed,
        n_train,
        n_dev,
        n_test,
        min_steps,
        max_steps,
        max_start,
        max_operand,
        max_factor,
        max_value,
    } = what;
    let cfg = ponder::recipes::synth::SynthConfig {
        seed,
        n_train,
        n_dev,
        n_test,
        min_steps,
        max_steps,
        max_start,
        max_operand,
        max_factor,
        max_value,
    };
    cfg.validate()
        .map_err(|e| Error::invalid("data synth", e))?;
    let splits =
        ponder::recipes::synth::generate(&cfg).map_err(|e| Error::invalid("data synth", e))?;
    let _lock = ponder::files::claim_out_dir(&out, "data synth")?;
    let files = ponder::recipes::data::write_synth(&out, &splits)?;
    for f in files {
        outln!("{}", f.display());
    }
    Ok(true)
}
