//! `ponder bench`: time a kernel or a model, median of repeated runs after a warm-up.

use std::path::PathBuf;

use clap::Subcommand;
use ponder::model::{LoadOpts, Model};
use ponder::train::trainer::SaveDType;
use ponder::{DType, Device, Result};

use super::{device, frozen};

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// f32 matmul C (M x N) = A (M x K) @ B (K x N).
    Matmul {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Profile one more run and print the table: every GPU kernel with timestamp queries,
        /// or on the CPU the wall time of each op family, forward and backward.
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
        /// A is the transpose of a row-major (K, M) matrix (a weight gradient dY^T @ X).
        #[arg(long)]
        a_t: bool,
        /// Multiply by this many distinct B matrices per rep, as a model's layers do; with
        /// enough to overflow the last-level cache, B comes from memory, as when decoding.
        #[arg(long, default_value_t = 1)]
        weights: usize,
        #[arg(long, default_value_t = 7)]
        reps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Fused causal attention, forward or forward+backward.
    Attention {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Profile one more run and print the table: every GPU kernel with timestamp queries,
        /// or on the CPU the wall time of each op family, forward and backward.
        #[arg(long)]
        profile: bool,
        #[arg(long, default_value_t = 1)]
        b: usize,
        #[arg(long, default_value_t = 512)]
        t: usize,
        /// Cached positions before the T queries (decoding: --t 1 --past S), so that keys
        /// and values hold past + T positions.
        #[arg(long, default_value_t = 0)]
        past: usize,
        #[arg(long, default_value_t = 14)]
        heads: usize,
        #[arg(long, default_value_t = 2)]
        kv_heads: usize,
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Time the backward pass instead of the forward.
        #[arg(long)]
        backward: bool,
        /// Cycle through this many independent key/value sets, one per call (as a model's
        /// layers do), so that caches larger than the last level cache come from memory.
        #[arg(long, default_value_t = 1)]
        caches: usize,
        /// Decoding as the sampling engine runs it: rows in groups of --group (the samples
        /// of one prompt) hold their first --shared cached positions alike, and the
        /// attention is told so (needs --t 1).
        #[arg(long, default_value_t = 0)]
        shared: usize,
        #[arg(long, default_value_t = 4)]
        group: usize,
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
        /// Recompute each decoder layer in the backward instead of keeping its
        /// activations (as `ponder dpo --gradient-checkpointing`).
        #[arg(long)]
        gradient_checkpointing: bool,
        /// Lay the pairs' sequences end to end in one row instead of padding them (as
        /// `ponder dpo --padding-free`).
        #[arg(long)]
        padding_free: bool,
        /// Also compute each pair's prompt once for both answers (as `ponder dpo
        /// --shared-prompt`; turns on --padding-free).
        #[arg(long)]
        shared_prompt: bool,
        #[arg(long, default_value_t = 2)]
        pairs: usize,
        #[arg(long, default_value_t = 64)]
        prompt_len: usize,
        /// Completion length of every chosen and rejected answer.
        #[arg(long, default_value_t = 64)]
        completion_len: usize,
        /// Chosen completion lengths MIN,MAX, drawn per pair (seeded; default
        /// --completion-len).
        #[arg(long, value_delimiter = ',', num_args = 1..=2)]
        chosen_len: Option<Vec<usize>>,
        /// Rejected completion lengths MIN,MAX (as --chosen-len).
        #[arg(long, value_delimiter = ',', num_args = 1..=2)]
        rejected_len: Option<Vec<usize>>,
        /// Time the first --pairs pairs of this preference JSONL instead (tokenized as
        /// `ponder dpo` does, with the model's tokenizer and chat template).
        #[arg(long, conflicts_with_all = ["qwen_05b", "chosen_len", "rejected_len"])]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long)]
        device: Option<String>,
        /// Profile one more run and print the table: every GPU kernel with timestamp queries,
        /// or on the CPU the wall time of each op family, forward and backward.
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
        /// Real prompts instead of random ones: {"question"|"prompt"} JSONL; each is
        /// sampled --samples times with --batch x --samples rows decoding at once, ending
        /// at EOS or --new-tokens (the workload of `eval --samples`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Column(s) of --data holding the prompt (comma-separated columns are joined).
        #[arg(long, default_value = "question")]
        question_field: String,
        /// Wrap each --data prompt as a user message in the chat template.
        #[arg(long)]
        chat: bool,
        /// Continuations of each --data prompt.
        #[arg(long, default_value_t = 4)]
        samples: usize,
        /// Use only the first N prompts of --data (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        /// Sample at this temperature (0: greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Keep the k most likely tokens when sampling (0: off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Keep the smallest set of tokens whose probability reaches p (1: off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Timed calls per batch size; the median call is reported.
        #[arg(long, default_value_t = 1)]
        reps: usize,
        #[arg(long)]
        device: Option<String>,
        /// Profile one more run and print the table: every GPU kernel with timestamp queries,
        /// or on the CPU the wall time of each op family, forward and backward.
        #[arg(long)]
        profile: bool,
        /// Write the random model to this directory (Hugging Face layout) and stop, so that
        /// loading it can be measured with --model.
        #[arg(long)]
        save_random: Option<PathBuf>,
    },
    /// The gradient all-reduce of data-parallel training, run under `mpirun -np N`: one
    /// sum of f32 buffers of these sizes over the ranks, timed (median), on rank 0.
    Allreduce {
        /// Buffer sizes in f32 elements (parameters), comma-separated; e.g. 134515008
        /// (SmolLM2-135M) or 494032768 (Qwen2.5-0.5B).
        #[arg(long, value_delimiter = ',', default_value = "134515008")]
        elements: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
}

pub(crate) fn bench_cmd(what: BenchCmd) -> Result<bool> {
    if let BenchCmd::Allreduce { elements, reps } = &what {
        return allreduce(elements, *reps);
    }
    if ponder::dist::size() > 1 {
        // N copies of one benchmark would only contend for the same cores or card
        return Err(ponder::Error::invalid(
            "bench",
            "this benchmark times one process: run it without mpirun (`bench allreduce` is the one that runs under mpirun)",
        ));
    }
    let profile = match &what {
        BenchCmd::Matmul { profile, .. }
        | BenchCmd::Attention { profile, .. }
        | BenchCmd::Dpo { profile, .. }
        | BenchCmd::Generate { profile, .. } => *profile,
        BenchCmd::Allreduce { .. } => false,
    };
    ponder::bench::set_profile(profile);
    let print_profile = || -> Result<()> {
        if let Some(t) = ponder::bench::take_profile() {
            outln!("{t}");
        }
        Ok(())
    };
    let r = match what {
        BenchCmd::Allreduce { .. } => unreachable!("handled above"),
        BenchCmd::Matmul {
            device: d,
            m,
            n,
            k,
            weight_t,
            a_t,
            weights,
            reps,
            warmup,
            ..
        } => ponder::bench::matmul(
            Device::parse(&d)?,
            m,
            n,
            k,
            weight_t,
            a_t,
            weights,
            warmup,
            reps,
        )?,
        BenchCmd::Attention {
            device: d,
            b,
            t,
            past,
            heads,
            kv_heads,
            head_dim,
            backward,
            caches,
            shared,
            group,
            reps,
            warmup,
            ..
        } => ponder::bench::attention(
            Device::parse(&d)?,
            &ponder::bench::AttentionCase {
                b,
                t,
                past,
                nh: heads,
                nkv: kv_heads,
                hd: head_dim,
                backward,
                caches,
                shared,
                group,
            },
            warmup,
            reps,
        )?,
        BenchCmd::Dpo {
            model,
            qwen_05b,
            no_ref_cache,
            gradient_checkpointing,
            padding_free,
            shared_prompt,
            pairs,
            prompt_len,
            completion_len,
            chosen_len,
            rejected_len,
            data,
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
                let dir = model.clone().expect("clap requires --model");
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
            let mut policy = policy;
            policy.gradient_checkpointing = gradient_checkpointing;
            policy.padding_free = padding_free || shared_prompt;
            policy.shared_prompt = shared_prompt;
            let set = match (&data, &model) {
                (Some(file), Some(dir)) => {
                    let tok = ponder::model::Tok::load(dir)?;
                    let trunc = ponder::train::data::Truncation {
                        max_prompt_length: None,
                        max_length: Some(policy.cfg.max_position_embeddings),
                        mode: ponder::train::data::TruncationMode::KeepStart,
                    };
                    let (mut v, _) = ponder::train::data::load_pairs(file, &tok, &trunc)?;
                    v.truncate(pairs);
                    v
                }
                _ => {
                    let range = |r: &Option<Vec<usize>>| match r.as_deref() {
                        Some([a]) => (*a, *a),
                        Some([a, b]) => (*a, *b),
                        _ => (completion_len, completion_len),
                    };
                    ponder::bench::synthetic_pairs(
                        ponder::bench::PairShape {
                            pairs,
                            prompt_len,
                            chosen: range(&chosen_len),
                            rejected: range(&rejected_len),
                        },
                        policy.cfg.vocab_size,
                    )?
                }
            };
            let r = ponder::bench::dpo_step(policy, reference, &set, steps)?;
            let device_peak = r
                .peak_device_mib
                .map(|m| format!(", peak device memory {m:.0} MiB (buffer pool)"))
                .unwrap_or_default();
            outln!(
                "dpo step on {dev}, {name}, {} pairs, reference {}{}{}: median {:.3}s per step, {} tokens/step ({} computed) = {:.1} tokens/s, peak RSS {:.0} MiB{device_peak}",
                set.len(),
                if no_ref_cache { "live (bf16 model each step)" } else { "cached log-probs" },
                if gradient_checkpointing { ", gradient checkpointing" } else { "" },
                if shared_prompt { ", padding-free, shared prompts" } else if padding_free { ", padding-free" } else { ", padded" },
                r.median_step_s,
                r.tokens_per_step,
                r.computed_tokens,
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
            temperature,
            top_k,
            top_p,
            reps,
            device: d,
            save_random,
            data,
            question_field,
            chat,
            samples,
            limit,
            ..
        } => {
            let sampling = ponder::bench::Sampling {
                temperature,
                top_k,
                top_p,
            };
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
                let dir = model.clone().expect("clap requires --model");
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
                let _lock = ponder::files::claim_out_dir(&out, "bench generate --save-random")?;
                ponder::model::save::save_model(&net, None, &out, dtype.dtype())?;
                outln!("wrote {}", out.display());
                return Ok(true);
            }
            if let Some(path) = data {
                let dir = model.clone().ok_or_else(|| {
                    ponder::Error::invalid("bench generate", "--data needs --model (its tokenizer)")
                })?;
                let tok = ponder::model::Tok::load(&dir)?;
                ponder::train::data::FieldArgs {
                    question_field: Some(question_field.clone()),
                    ..Default::default()
                }
                .install()?;
                let prompts = ponder::bench::data_prompts(&path, &tok, chat, limit)?;
                let flops_per_token = 2.0 * net.num_parameters() as f64;
                for b in batch {
                    let p = ponder::model::generate::SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                        max_new_tokens: new_tokens,
                        seed: 0,
                        eos_ids: tok.eos_ids.clone(),
                        rows: b * samples,
                        ..Default::default()
                    };
                    let (s, tokens) = ponder::bench::generation_data(&net, &prompts, samples, &p)?;
                    let wall = s.prefill_s + s.decode_s;
                    outln!(
                        "{} prompts x {samples} samples, {} rows on {dev}: {:.2}s, {tokens} tokens generated (mean {:.1}), {:.1} tok/s, {:.1} GFLOP/s (2 x params per token, prefill included)",
                        prompts.len(),
                        s.rows,
                        wall,
                        tokens as f64 / (prompts.len() * samples) as f64,
                        tokens as f64 / wall,
                        flops_per_token * (s.decode_tokens + s.prefill_tokens) as f64 / wall / 1e9
                    );
                    outln!("  {}", s.summary());
                    outln!("  {}", s.engine_summary());
                }
            } else {
                for b in batch {
                    let s =
                        ponder::bench::generation(&net, b, prompt_len, new_tokens, sampling, reps)?;
                    outln!("batch {b} on {dev}: {}", s.summary());
                    outln!("  {}", s.engine_summary());
                }
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

/// `bench allreduce`: the median time of summing an f32 buffer over the ranks, with the
/// bytes each rank sends in and the algorithm bandwidth (buffer bytes / time).
fn allreduce(elements: &[usize], reps: usize) -> Result<bool> {
    use ponder::dist;
    let n = dist::size();
    if n < 2 {
        return Err(ponder::Error::invalid(
            "bench allreduce",
            "one rank has nothing to reduce: run it as `mpirun -np 2 ponder bench allreduce` \
             with a ponder built with --features mpi",
        ));
    }
    for &e in elements {
        // not zeros: each rank its own values
        let mut buf: Vec<f32> = (0..e)
            .map(|i| ((i * 7 + dist::rank() * 13) % 101) as f32 * 0.01)
            .collect();
        let mut times = Vec::new();
        for _ in 0..reps.max(1) + 1 {
            dist::barrier();
            let t0 = std::time::Instant::now();
            dist::all_reduce_f32(&mut buf);
            times.push(t0.elapsed().as_secs_f64());
        }
        times.remove(0); // warm-up
        times.sort_by(|a, b| a.total_cmp(b));
        let med = times[times.len() / 2];
        let mb = (e * 4) as f64 / 1e6;
        if dist::is_root() {
            outln!(
                "allreduce over {n} ranks: {e} f32 ({mb:.1} MB per rank): median {:.1} ms of {} runs, {:.2} GB/s algorithm bandwidth",
                med * 1e3,
                times.len(),
                mb / 1e3 / med
            );
        }
    }
    Ok(true)
}
