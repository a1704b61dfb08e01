//! Benchmarks shared by `ponder bench` and `benches/`: warm up, repeat, report the median
//! and the achieved GFLOP/s. Inputs are random (never zeros). GPU timings include the
//! submit and a wait for completion (`sync`), so they are wall-clock per call.

use std::time::Instant;

use crate::error::Result;
use crate::ops::attention::AttnOpts;
use crate::tensor::{Device, Tensor};

/// One benchmark's outcome.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub name: String,
    pub device: Device,
    /// Median seconds per call.
    pub median_s: f64,
    /// Fastest and slowest call, to show the noise.
    pub min_s: f64,
    pub max_s: f64,
    pub flops: f64,
    pub reps: usize,
}

impl BenchResult {
    pub fn gflops(&self) -> f64 {
        self.flops / self.median_s / 1e9
    }
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {}: median {:.3} ms (min {:.3}, max {:.3}, {} reps) = {:.1} GFLOP/s",
            self.name,
            self.device,
            self.median_s * 1e3,
            self.min_s * 1e3,
            self.max_s * 1e3,
            self.reps,
            self.gflops()
        )
    }
}

static PROFILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static PROFILE_TABLE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// `--profile`: every benchmark below then runs its timed work once more under the GPU
/// profiler, and [`take_profile`] returns the table.
pub fn set_profile(on: bool) {
    PROFILE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The last profile's table, if one was taken.
pub fn take_profile() -> Option<String> {
    PROFILE_TABLE.lock().unwrap().take()
}

fn counters() -> crate::backend::gpu::profile::Counters {
    crate::backend::gpu::profile::counters()
}

/// When profiling is on, run `f` once more under the GPU profiler (kernels timed with
/// timestamp queries) or the CPU one (wall time per op, see `backend::cpu::profile`) and
/// keep the table.
/// `last` holds the free counts of the last unprofiled run: a profiled dispatch gets a
/// compute pass of its own, so only an unprofiled run shows how many passes are shared.
fn maybe_profile(
    dev: Device,
    last: Option<crate::backend::gpu::profile::Counters>,
    f: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !PROFILE.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let table = if dev != Device::Gpu {
        crate::backend::cpu::profile::start();
        let t0 = Instant::now();
        let r = f();
        let table = crate::backend::cpu::profile::finish(t0.elapsed().as_secs_f64());
        r?;
        table
    } else {
        let ctx = crate::backend::gpu::context()?;
        ctx.sync()?;
        ctx.profile_start();
        f()?;
        let mut t = ctx.profile_finish()?.table();
        if let Some(c) = last {
            t.push_str(&format!("\nlast timed run, unprofiled: {c}"));
        }
        t
    };
    *PROFILE_TABLE.lock().unwrap() = Some(table);
    Ok(())
}

fn wait(dev: Device) -> Result<()> {
    if dev == Device::Gpu {
        crate::backend::gpu::context()?.sync()?;
    }
    Ok(())
}

/// Refuse a benchmark before it allocates: every size at least 1, `reps` at least 1,
/// and the tensors it makes (`bytes`, counted in u128 so that no product wraps) within
/// the memory this machine has available.
pub fn check_sizes(what: &'static str, dims: &[(&str, usize)], bytes: u128) -> Result<()> {
    for (flag, v) in dims {
        if *v == 0 {
            return Err(crate::train::fit::range_error(what, flag, v, "at least 1"));
        }
        if *flag == "reps" && *v > 1_000_000 {
            return Err(crate::train::fit::range_error(what, flag, v, "1..=1000000"));
        }
    }
    let avail = crate::train::memory::available().unwrap_or(u64::MAX) as u128;
    if bytes > avail {
        return Err(crate::Error::invalid(
            what,
            format!(
                "these sizes need {:.1} GiB for their tensors alone, and {:.1} GiB is available; choose smaller sizes",
                bytes as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            ),
        ));
    }
    Ok(())
}

/// Time `f` (`warmup` untimed calls, then `reps` timed ones).
pub fn time(
    name: &str,
    dev: Device,
    flops: f64,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<BenchResult> {
    if reps > 1_000_000 || warmup > 1_000_000 {
        return Err(crate::Error::invalid(
            "bench",
            format!("--reps {reps} / --warmup {warmup}: each is accepted up to 1,000,000"),
        ));
    }
    for _ in 0..warmup {
        f()?;
        wait(dev)?;
    }
    let mut ts = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps.max(1) {
        let c0 = counters();
        let t0 = Instant::now();
        f()?;
        wait(dev)?;
        ts.push(t0.elapsed().as_secs_f64());
        last = Some(counters() - c0);
    }
    maybe_profile(dev, last, &mut f)?;
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(BenchResult {
        name: name.to_string(),
        device: dev,
        median_s: ts[ts.len() / 2],
        min_s: ts[0],
        max_s: ts[ts.len() - 1],
        flops,
        reps: ts.len(),
    })
}

/// C (M x N) = A (M x K) @ B (K x N), f32. With `weight_t`, B is the transpose of a
/// row-major (N, K) weight, as in a linear layer's x @ W^T; with `a_t`, A is the transpose
/// of a row-major (K, M) matrix, as in a weight gradient dY^T @ X. Each rep multiplies A
/// by `weights` distinct B matrices in turn, as a model's layers do: with enough of them to
/// overflow the last-level cache, B comes from memory, as it does when decoding.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dev: Device,
    m: usize,
    n: usize,
    k: usize,
    weight_t: bool,
    a_t: bool,
    weights: usize,
    warmup: usize,
    reps: usize,
) -> Result<BenchResult> {
    let (m_, n_, k_, w_) = (m as u128, n as u128, k as u128, weights as u128);
    check_sizes(
        "bench matmul",
        &[
            ("m", m),
            ("n", n),
            ("k", k),
            ("weights", weights),
            ("reps", reps),
        ],
        4 * (m_ * k_ + w_ * k_ * n_ + m_ * n_),
    )?;
    let a = if a_t {
        Tensor::randn(&[k, m], 1.0, 1, dev)?.t()?
    } else {
        Tensor::randn(&[m, k], 1.0, 1, dev)?
    };
    let bs = (0..weights)
        .map(|i| {
            let seed = 2 + i as u64;
            if weight_t {
                Tensor::randn(&[n, k], 1.0, seed, dev)?.t()
            } else {
                Tensor::randn(&[k, n], 1.0, seed, dev)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let flops = 2.0 * m as f64 * n as f64 * k as f64 * weights as f64;
    let name = format!(
        "matmul {m}x{n}x{k}{}{}{}",
        if weight_t { " (x @ W^T)" } else { "" },
        if a_t { " (dY^T @ X)" } else { "" },
        if weights > 1 {
            format!(" over {weights} weights")
        } else {
            String::new()
        }
    );
    time(&name, dev, flops, warmup, reps, || {
        for b in &bs {
            a.matmul(b)?;
        }
        Ok(())
    })
}

/// What `bench attention` times: causal attention at B x T with NH/NKV heads of HD, the
/// T queries coming after `past` cached positions (decoding: T = 1 over a cache).
#[derive(Clone, Debug)]
pub struct AttentionCase {
    pub b: usize,
    pub t: usize,
    pub past: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Time the backward pass instead of the forward.
    pub backward: bool,
    /// Independent key/value sets, one per call in turn (as a model's layers are), so
    /// that more than the last level cache holds comes from memory.
    pub caches: usize,
    /// Decoding as the sampling engine runs it: rows in groups of `group` (the samples of
    /// one prompt) hold their first `shared` positions alike and say so
    /// ([`AttnOpts::kv_shared`]).
    pub shared: usize,
    pub group: usize,
}

/// Times an [`AttentionCase`]. FLOPs count the useful work: forward
/// 4*B*NH*HD*(T*past + T*T/2) (QK^T and PV under a causal mask), backward 2.5x that
/// (five products).
pub fn attention(
    dev: Device,
    c: &AttentionCase,
    warmup: usize,
    reps: usize,
) -> Result<BenchResult> {
    let (b, t, past, nh, nkv, hd) = (c.b, c.t, c.past, c.nh, c.nkv, c.hd);
    let rows = b as u128 * t as u128 * hd as u128;
    let s = t.checked_add(past).ok_or_else(|| {
        crate::Error::invalid(
            "bench attention",
            format!("--t {t} + --past {past} overflows"),
        )
    })?;
    check_sizes(
        "bench attention",
        &[
            ("b", b),
            ("t", t),
            ("past + t", s),
            ("heads", nh),
            ("kv-heads", nkv),
            ("head-dim", hd),
            ("reps", reps),
            ("caches", c.caches),
            ("group", c.group),
        ],
        // q, out, dq, dout and k, v, dk, dv (k, v, dk, dv over past + t positions), the
        // keys and values once per cache
        4 * rows * 4 * nh as u128
            + 4 * (b as u128 * s as u128 * hd as u128) * 4 * nkv as u128 * c.caches as u128,
    )?;
    if !nh.is_multiple_of(nkv) {
        return Err(crate::Error::invalid(
            "bench attention",
            format!("--heads {nh} is not a multiple of --kv-heads {nkv}"),
        ));
    }
    if c.shared > 0 && (t != 1 || c.backward || c.shared > past) {
        return Err(crate::Error::invalid(
            "bench attention",
            format!(
                "--shared {} is for decoding: it needs --t 1, no --backward, and at most \
                 --past {past} positions",
                c.shared
            ),
        ));
    }
    let q = Tensor::randn(&[b, t, nh, hd], 1.0, 1, dev)?;
    // every row of a group holds its leader's first `shared` positions
    let kv = |seed: u64| -> Result<Tensor> {
        let w = s * nkv * hd;
        let mut x = crate::util::randn_vec(b * w, 1.0, seed);
        for r in (0..b).filter(|r| r % c.group != 0) {
            let lead = r / c.group * c.group;
            x.copy_within(lead * w..lead * w + c.shared * nkv * hd, r * w);
        }
        Tensor::from_vec(x, &[b, s, nkv, hd], dev)
    };
    let sets: Vec<(Tensor, Tensor)> = (0..c.caches as u64)
        .map(|i| Ok((kv(2 + 2 * i)?, kv(3 + 2 * i)?)))
        .collect::<Result<_>>()?;
    let opts = AttnOpts {
        causal: true,
        kv_shared: (c.shared > 0).then(|| {
            (0..b)
                .flat_map(|r| [(r / c.group * c.group) as u32, 0, c.shared as u32])
                .collect()
        }),
        ..Default::default()
    };
    let fwd = 4.0 * (b * nh) as f64 * hd as f64 * (t as f64 * past as f64 + (t * t) as f64 / 2.0);
    let mut over = if past > 0 {
        format!(" past {past}")
    } else {
        String::new()
    };
    if c.shared > 0 {
        over += &format!(" ({} shared by {})", c.shared, c.group);
    }
    if c.caches > 1 {
        over += &format!(" over {} caches", c.caches);
    }
    let mut turn = 0;
    if !c.backward {
        return time(
            &format!("attention fwd B{b} T{t}{over} NH{nh} NKV{nkv} HD{hd}"),
            dev,
            fwd,
            warmup,
            reps,
            || {
                let (k, v) = &sets[turn % sets.len()];
                turn += 1;
                Tensor::attention(&q, k, v, &opts)?;
                Ok(())
            },
        );
    }
    let q = q.requires_grad_();
    let g = Tensor::randn(&[b, t, nh, hd], 1.0, 4, dev)?;
    let sets: Vec<_> = sets
        .into_iter()
        .map(|(k, v)| {
            let (k, v) = (k.requires_grad_(), v.requires_grad_());
            let y = Tensor::attention(&q, &k, &v, &opts)?;
            Ok((k, v, y))
        })
        .collect::<Result<_>>()?;
    time(
        &format!("attention bwd B{b} T{t}{over} NH{nh} NKV{nkv} HD{hd}"),
        dev,
        fwd * 2.5,
        warmup,
        reps,
        || {
            let (k, v, y) = &sets[turn % sets.len()];
            turn += 1;
            y.backward_with(g.clone())?;
            for p in [&q, k, v] {
                p.zero_grad();
            }
            Ok(())
        },
    )
}

/// Peak resident memory of this process so far (Linux VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// config.json of a randomly initialised model with Qwen2.5-0.5B's shapes.
pub fn qwen25_05b_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
        "eos_token_id": 151643
    })
}

/// How [`generation`] picks tokens: greedy at temperature 0, else HF's order of
/// temperature, top-k (0: off), top-p (1: off).
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
}

/// Prefill and decode throughput of `net`: `batch` rows of `prompt_len` random tokens,
/// then `new_tokens` steps (EOS ignored), timed `reps` times (the median call is returned).
pub fn generation(
    net: &crate::model::Transformer,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    sampling: Sampling,
    reps: usize,
) -> Result<crate::model::generate::GenStats> {
    check_sizes(
        "bench generate",
        &[("batch", batch), ("prompt-len", prompt_len)],
        // the KV cache: 2 x layers x rows x positions x kv width, f32
        8 * net.cfg.num_hidden_layers as u128
            * batch as u128
            * (prompt_len as u128 + new_tokens as u128)
            * (net.cfg.num_key_value_heads * net.cfg.head_dim) as u128,
    )?;
    use crate::model::generate::{generate, SamplingParams};
    let v = net.cfg.vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| {
            (0..prompt_len)
                .map(|i| (i as u32 * 7919 + b as u32 * 104729 + 13) % v)
                .collect()
        })
        .collect();
    let p = SamplingParams {
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        max_new_tokens: new_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    // `reps` timed calls; the one with the median wall time is reported
    let mut runs = Vec::new();
    let mut last = None;
    for _ in 0..reps.max(1) {
        let c0 = counters();
        let (_, stats) = generate(net, &prompts, 1, &p, None, &mut |_, _| {})?;
        last = Some(counters() - c0);
        runs.push(stats);
    }
    runs.sort_by(|a, b| (a.prefill_s + a.decode_s).total_cmp(&(b.prefill_s + b.decode_s)));
    let stats = runs[(runs.len() - 1) / 2];
    maybe_profile(net.device, last, || {
        generate(net, &prompts, 1, &p, None, &mut |_, _| {}).map(|_| ())
    })?;
    Ok(stats)
}

/// The prompts of a `{"prompt"|"question"}` JSONL file as ids (first `limit`, 0: all),
/// wrapped in the chat template when `chat`.
pub fn data_prompts(
    path: &std::path::Path,
    tok: &crate::model::Tok,
    chat: bool,
    limit: usize,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    for (line, o, _) in crate::train::data::read_jsonl_lines(path)? {
        let text = crate::recipes::data::text_field(path, line, &o, &["prompt", "question"])?;
        out.push(crate::recipes::eval::prompt_ids(tok, &text, chat)?);
        if out.len() == limit {
            break;
        }
    }
    if out.is_empty() {
        return Err(crate::error::Error::file(path, "holds no prompt"));
    }
    Ok(out)
}

/// Sampling over real prompts (rows end at EOS): `samples` continuations of each prompt,
/// `rows` rows decoding at once, through the sampling engine. Returns the engine's
/// statistics and the generated tokens (EOS not counted).
pub fn generation_data(
    net: &crate::model::Transformer,
    prompts: &[Vec<u32>],
    samples: usize,
    p: &crate::model::generate::SamplingParams,
) -> Result<(crate::model::generate::GenStats, usize)> {
    use crate::model::generate::generate;
    let c0 = counters();
    let (seqs, stats) = generate(net, prompts, samples, p, None, &mut |_, _| {})?;
    let last = Some(counters() - c0);
    let tokens = seqs
        .iter()
        .map(|s| s.ids.len() - usize::from(s.finish == crate::model::generate::Finish::Eos))
        .sum();
    maybe_profile(net.device, last, || {
        generate(net, prompts, samples, p, None, &mut |_, _| {}).map(|_| ())
    })?;
    Ok((stats, tokens))
}

/// Outcome of [`dpo_step`].
#[derive(Clone, Debug)]
pub struct DpoBench {
    pub steps: usize,
    pub median_step_s: f64,
    /// Tokens of the pairs (chosen + rejected, prompts included), padding not counted.
    pub tokens_per_step: usize,
    /// Tokens the step computes on: the same when padding-free, rows x longest otherwise.
    pub computed_tokens: usize,
    pub peak_rss_mib: f64,
    /// On the GPU, the most device memory the buffer pool held at once.
    pub peak_device_mib: Option<f64>,
}

/// Lengths of the synthetic pairs of `ponder bench dpo`.
#[derive(Clone, Copy, Debug)]
pub struct PairShape {
    pub pairs: usize,
    pub prompt_len: usize,
    /// Completion lengths `[min, max]`, drawn uniformly per pair (seeded).
    pub chosen: (usize, usize),
    pub rejected: (usize, usize),
}

/// Synthetic pairs of `shape` over a vocabulary of `v` ids (no all-zero data: ids are
/// spread over the vocabulary).
pub fn synthetic_pairs(shape: PairShape, v: usize) -> Result<Vec<crate::train::data::Pair>> {
    use crate::train::data::{Pair, Seq};
    use rand::Rng;
    let PairShape {
        pairs,
        prompt_len,
        chosen,
        rejected,
    } = shape;
    check_sizes(
        "bench dpo",
        &[
            ("pairs", pairs),
            ("prompt-len", prompt_len),
            ("completion-len", chosen.0.min(rejected.0)),
        ],
        // the token ids alone; the memory estimate of a step is the trainer's
        8 * pairs as u128 * (prompt_len as u128 + chosen.1.max(rejected.1) as u128),
    )?;
    for (flag, (lo, hi)) in [("chosen-len", chosen), ("rejected-len", rejected)] {
        if lo > hi {
            return Err(crate::train::fit::range_error(
                "bench dpo",
                flag,
                format!("{lo},{hi}"),
                "MIN,MAX with MIN <= MAX",
            ));
        }
    }
    let mut rng = crate::util::rng(0x5EED);
    let v = v as u32;
    // a pair's chosen and rejected share their prompt, as real pairs do
    let mut seq = |salt: u32, (lo, hi): (usize, usize)| -> Seq {
        let n = rng.random_range(lo..=hi);
        let ids: Vec<u32> = (0..(prompt_len + n) as u32)
            .map(|i| {
                let s = if (i as usize) < prompt_len {
                    salt / 2
                } else {
                    salt
                };
                (i * 7919 + s * 104729 + 17) % v
            })
            .collect();
        Seq { ids, prompt_len }
    };
    Ok((0..pairs as u32)
        .map(|i| Pair {
            chosen: seq(2 * i, chosen),
            rejected: seq(2 * i + 1, rejected),
        })
        .collect())
}

/// Time full DPO optimizer steps (policy forward + backward + AdamW) over `data` as one
/// micro-batch, after one untimed warm-up step. Without `reference`, the reference
/// log-probs are computed once beforehand (as the cache does); with it, that frozen
/// model runs under no_grad in every step. The policy's `padding_free`, `shared_prompt`
/// and `gradient_checkpointing` switches apply.
pub fn dpo_step(
    policy: crate::model::Transformer,
    reference: Option<crate::model::Transformer>,
    data: &[crate::train::data::Pair],
    steps: usize,
) -> Result<DpoBench> {
    check_sizes("bench dpo", &[("pairs", data.len()), ("steps", steps)], 0)?;
    use crate::train::data::Pair;
    use crate::train::loss::DpoParams;
    use crate::train::optim::{Schedule, Scheduler};
    use crate::train::step::{reference_sums, LiveReference, MicroBatch, Trainer};
    let ps: Vec<&Pair> = data.iter().collect();
    let lens: Vec<usize> = data
        .iter()
        .flat_map(|p| [p.chosen.ids.len(), p.rejected.ids.len()])
        .collect();
    let max_pos = policy.cfg.max_position_embeddings;
    if let Some(l) = lens.iter().copied().max().filter(|&l| l > max_pos) {
        return Err(crate::Error::invalid(
            "bench dpo",
            format!("a sequence of {l} tokens is past the model's max_position_embeddings = {max_pos}: shorten --prompt-len and --completion-len (or --chosen-len, --rejected-len)"),
        ));
    }
    let tokens: usize = lens.iter().sum();
    let computed = if policy.padding_free && policy.shared_prompt {
        let seqs: Vec<_> = ps
            .iter()
            .map(|p| &p.chosen)
            .chain(ps.iter().map(|p| &p.rejected))
            .collect();
        tokens - crate::train::pack::pack_shared(&seqs).saved
    } else if policy.padding_free {
        tokens
    } else {
        lens.len() * lens.iter().copied().max().unwrap_or(0)
    };
    let p = DpoParams::sigmoid(0.1);
    let schedule = Schedule {
        kind: Scheduler::Constant,
        lr: 1e-6,
        warmup_steps: 0,
        total_steps: steps,
        min_lr: 1e-6,
    };
    let device = policy.device;
    // the same step `ponder dpo` takes: cached reference sums, or a live frozen model
    let cached = match reference {
        None => Some(reference_sums(&policy, &ps, false)?),
        Some(_) => None,
    };
    let (padding_free, shared_prompt) = (policy.padding_free, policy.shared_prompt);
    let mut trainer = Trainer::new(policy, false, schedule, 0.0, 1.0, p, 0)?;
    trainer.reference = reference.map(|mut r| {
        r.padding_free = padding_free;
        r.shared_prompt = shared_prompt;
        LiveReference::Model(Box::new(r))
    });
    let mut times = Vec::new();
    let mut last = None;
    // one untimed step first, as the peer does: the optimizer state is allocated there
    for i in 0..steps + 1 {
        let c0 = counters();
        let t0 = Instant::now();
        let batch = MicroBatch::Dpo {
            pairs: ps.clone(),
            reference: cached.clone(),
        };
        trainer.step(&[batch])?;
        if device == Device::Gpu {
            crate::backend::gpu::context()?.sync()?;
        }
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
        last = Some(counters() - c0);
    }
    maybe_profile(device, last, || {
        let batch = MicroBatch::Dpo {
            pairs: ps.clone(),
            reference: cached.clone(),
        };
        trainer.step(&[batch]).map(|_| ())
    })?;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(DpoBench {
        steps,
        median_step_s: times[times.len() / 2],
        tokens_per_step: tokens,
        computed_tokens: computed,
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
        peak_device_mib: (device == Device::Gpu)
            .then(|| crate::backend::gpu::peak_bytes() as f64 / (1u64 << 20) as f64),
    })
}
