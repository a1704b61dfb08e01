//! The model commands: logits, compare, generate and save (parse, call the library,
//! print).

use std::io::Write;
use std::path::PathBuf;

use ponder::model::chat::Message;
use ponder::model::generate::SamplingParams;
use ponder::model::{LoadOpts, Model};
use ponder::{Device, Error, Result};

use super::{device, frozen, Format};

#[derive(clap::Args)]
pub(crate) struct GenerateArgs {
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
    /// Keep tokens at least this fraction as likely as the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Rows decoding at once (0: all -n samples together); a row that ends takes the next
    /// sample.
    #[arg(long, default_value_t = 0)]
    rows: usize,
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

pub(crate) fn logits_cmd(dir: PathBuf, ids: Vec<u32>, dev: Option<String>) -> Result<bool> {
    let m = Model::load(&dir, frozen(device(dev)?))?;
    let v = m.cfg.vocab_size;
    // as generate and training refuse: positions past the model's are not its logits
    let max_pos = m.cfg.max_position_embeddings;
    if ids.len() > max_pos {
        return Err(Error::invalid(
            "logits",
            format!(
                "{} ids reach position {}, past the model's max_position_embeddings = {max_pos}",
                ids.len(),
                ids.len() - 1
            ),
        ));
    }
    if !ponder::dist::is_root() {
        return Ok(true);
    }
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

pub(crate) fn compare_cmd(
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

pub(crate) fn generate_cmd(a: GenerateArgs) -> Result<bool> {
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
        min_p: a.min_p,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        ignore_eos: a.ignore_eos,
        rows: a.rows,
        item_offset: 0,
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

/// The weight type `ponder save` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SaveType {
    F32,
    F16,
    Bf16,
    /// 8-bit blocks (GGUF only).
    #[value(name = "q8_0")]
    Q8_0,
}

pub(crate) fn save_cmd(dir: PathBuf, out: PathBuf, dtype: SaveType) -> Result<bool> {
    use ponder::model::gguf::write::WeightType;
    let to_gguf = ponder::model::gguf::is_gguf(&out);
    if dtype == SaveType::Q8_0 && !to_gguf {
        return Err(Error::invalid(
            "save",
            "--dtype q8_0 is for GGUF output only (an --out ending in .gguf); a Hugging Face directory takes f32, f16 or bf16",
        ));
    }
    if to_gguf && std::fs::symlink_metadata(&out).is_ok() {
        return Err(Error::file(
            &out,
            "already exists; ponder does not overwrite a file: choose another --out",
        ));
    }
    let m = Model::load(
        &dir,
        LoadOpts {
            device: Device::Cpu,
            keep_16bit: false,
            trainable: false,
        },
    )?;
    if to_gguf {
        let wt = match dtype {
            SaveType::F32 => WeightType::F32,
            SaveType::F16 => WeightType::F16,
            SaveType::Bf16 => WeightType::BF16,
            SaveType::Q8_0 => WeightType::Q8_0,
        };
        if m.tok.is_none() {
            eprintln!(
                "note: {} has no tokenizer; the GGUF file will carry none (llama.cpp needs one to run it)",
                dir.display()
            );
        }
        ponder::model::gguf::write::save_gguf(&m.net, m.tok.as_ref(), &out, wt)?;
    } else {
        let dt = match dtype {
            SaveType::F16 => ponder::DType::F16,
            SaveType::Bf16 => ponder::DType::BF16,
            _ => ponder::DType::F32,
        };
        let _lock = ponder::files::claim_out_dir(&out, "save")?;
        ponder::model::save::save_model(&m.net, Some(&dir), &out, dt)?;
    }
    eprintln!(
        "saved {} ({} parameters) to {}",
        dir.display(),
        m.net.num_parameters(),
        out.display()
    );
    Ok(true)
}
