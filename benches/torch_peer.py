#!/usr/bin/env python3
"""PyTorch peer of `ponder bench`: the same four figures on the same device, same shapes.

Run it beside ponder in one session on the same machine, e.g. on a GPU

    ponder bench matmul --device gpu --m 4096 --n 4096 --k 4096
    python3 benches/torch_peer.py matmul --m 4096 --n 4096 --k 4096

or on the CPU with a real checkpoint, two threads each

    RAYON_NUM_THREADS=2 ponder bench dpo --device cpu --model DIR --pairs 1 --prompt-len 64 --completion-len 448
    python3 benches/torch_peer.py --device cpu --threads 2 dpo --model DIR --pairs 1 --prompt-len 64 --completion-len 448

Subcommands mirror ponder's: `matmul` (f32, TF32 off), `attention` (causal SDPA in f32,
grouped-query heads; `--backward` times the backward pass alone, as ponder does),
`dpo` (full DPO optimizer steps on a random Qwen2.5-0.5B-shaped model trained in f32,
reference log-probs computed once beforehand, AdamW, clip 1.0) and `generate` (fixed-length
decode with bf16 weights, greedy unless `--temperature`). `--model DIR` runs `dpo` and
`generate` on a Hugging Face checkpoint instead, in f32 as ponder loads it. FLOP counts follow ponder's: 2MNK for matmul; 2 B NH T^2 HD
for causal attention forward (half of the 4 B NH T^2 HD of the full square), 2.5x that
for the backward. Each figure is the median of `--reps` timed runs after warm-up, with
the GPU synchronised around each. Nothing is downloaded: the models are built from a
config written here or read from `--model`.
"""

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F


DEVICE = "cuda"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(f, warmup, reps):
    for _ in range(warmup):
        f()
    sync()
    ts = []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def device():
    if DEVICE == "cpu":
        return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads)"
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device (use --device cpu)")
    # the same arithmetic as ponder's f32 kernels: no TF32 anywhere
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda"), torch.cuda.get_device_name()


def matmul(a):
    dev, name = device()
    g = torch.Generator(device=dev).manual_seed(1)
    # --a-t: A is the transpose of a row-major (K, M) matrix, as in dW = dY^T @ X
    x = torch.randn(a.k, a.m, device=dev, generator=g).t() if a.a_t else torch.randn(a.m, a.k, device=dev, generator=g)
    # --weight-t: B is the transpose of a row-major (N, K) weight, as in x @ W^T
    # --weights: A meets that many distinct B matrices per rep, as a model's layers do
    ws = [torch.randn((a.n, a.k) if a.weight_t else (a.k, a.n), device=dev, generator=g) for _ in range(a.weights)]

    def f():
        for w in ws:
            _ = x @ w.t() if a.weight_t else x @ w

    s = timed(f, a.warmup, a.reps)
    flops = 2.0 * a.m * a.n * a.k * a.weights
    over = f" over {a.weights} weights" if a.weights > 1 else ""
    print(f"torch matmul f32 {a.m}x{a.n}x{a.k}{over} on {name}: {s * 1e3:.3f} ms = {flops / s / 1e9:.1f} GFLOP/s")


def attention(a):
    dev, name = device()
    a.nh, a.nkv, a.hd = a.heads, a.kv_heads, a.head_dim
    g = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(a.b, a.nh, a.t, a.hd, device=dev, generator=g)
    s = a.past + a.t
    k = torch.randn(a.b, a.nkv, s, a.hd, device=dev, generator=g)
    v = torch.randn(a.b, a.nkv, s, a.hd, device=dev, generator=g)
    # grouped-query heads: each key/value head serves nh / nkv query heads
    rep = a.nh // a.nkv
    fwd = 4.0 * a.b * a.nh * a.hd * (a.t * a.past + a.t * a.t / 2.0)
    # after a cache, query i (position past + i) sees keys 0..=past + i: SDPA's is_causal
    # aligns the mask top-left, so the bottom-right one is given (a single query, as
    # when decoding, sees every key and needs none, as in transformers)
    mask = None
    if a.past > 0 and a.t > 1:
        mask = torch.ones(a.t, s, dtype=torch.bool, device=dev).tril(diagonal=a.past)

    def run(q, k, v):
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if a.past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    if not a.backward:
        with torch.no_grad():
            s = timed(lambda: run(q, k, v), a.warmup, a.reps)
        flops, what = fwd, "fwd"
    else:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        y = run(q, k, v)
        dy = torch.randn(y.shape, device=dev, generator=g)

        def bwd():
            for t in (q, k, v):
                t.grad = None
            y.backward(dy, retain_graph=True)

        s = timed(bwd, a.warmup, a.reps)
        flops, what = 2.5 * fwd, "bwd"
    over = f" past {a.past}" if a.past else ""
    print(
        f"torch attention {what} B{a.b} T{a.t}{over} NH{a.nh} NKV{a.nkv} HD{a.hd} on {name}: "
        f"{s * 1e3:.3f} ms = {flops / s / 1e9:.1f} GFLOP/s"
    )


def peak_mib():
    """Peak device memory on a GPU, peak resident set size on the CPU."""
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "GPU memory"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "RSS"


def load(a, dtype):
    """The --model checkpoint in f32 (as ponder trains and samples it), or the random
    Qwen2.5-0.5B shape in `dtype`."""
    if a.model is None:
        return qwen_05b(dtype), "random Qwen2.5-0.5B shape"
    from transformers import AutoModelForCausalLM

    # eager attention is transformers' plain path; sdpa is its default and the faster one
    m = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    return m, a.model


def qwen_05b(dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=32768, eos_token_id=151643,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).to(dtype)


def ids(salts, length, c, v):
    # the same synthetic ids as `ponder bench`: row s is (i * 7919 + s * 104729 + c) % v
    return [[(i * 7919 + s * 104729 + c) % v for i in range(length)] for s in salts]


def completion_logps(model, x, prompt_len):
    logits = model(input_ids=x).logits[:, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(-1, x[:, 1:, None]).squeeze(-1)
    return lp[:, prompt_len - 1:].sum(-1)


def dpo(a):
    dev, name = device()
    model, what = load(a, torch.float32)
    model = model.to(dev).train()
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    v = model.config.vocab_size
    length = a.prompt_len + a.completion_len
    # rows 0..pairs are chosen (ponder's pair i: salt 2i), pairs..2 pairs rejected (2i + 1)
    salts = [2 * i for i in range(a.pairs)] + [2 * i + 1 for i in range(a.pairs)]
    x = torch.tensor(ids(salts, length, 17, v), device=dev)
    with torch.no_grad():
        ref = completion_logps(model, x, a.prompt_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    beta = 0.1

    def step():
        lp = completion_logps(model, x, a.prompt_len)
        margin = (lp[: a.pairs] - ref[: a.pairs]) - (lp[a.pairs:] - ref[a.pairs:])
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    s = timed(step, 1, a.steps)
    tokens = 2 * a.pairs * length
    peak, of = peak_mib()
    print(
        f"torch dpo step, {what}, {a.pairs} pairs x {length} tokens on {name}: "
        f"{s:.3f} s per step, {tokens / s:.0f} tokens/s, peak {of} {peak:.0f} MiB"
    )


def generate(a):
    dev, name = device()
    model, what = load(a, torch.bfloat16)
    model = model.to(dev).eval()
    v = model.config.vocab_size
    # sampling as ponder's --temperature/--top-k/--top-p, nothing else (HF's default top-k
    # of 50 would otherwise apply)
    sampling = (
        dict(do_sample=True, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
        if a.temperature > 0
        else dict(do_sample=False)
    )
    torch.manual_seed(0)
    for b in a.batch:
        x = torch.tensor(ids(range(b), a.prompt_len, 13, v), device=dev)
        kw = dict(
            max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, pad_token_id=0,
            attention_mask=torch.ones_like(x), **sampling,
        )
        with torch.no_grad():
            s = timed(lambda: model.generate(x, **kw), 1, a.reps)
        how = f"T {a.temperature} top-k {a.top_k} top-p {a.top_p}" if a.temperature > 0 else "greedy"
        print(
            f"torch generate, {what}, {how}, batch {b}, prompt {a.prompt_len}, {a.new_tokens} new "
            f"on {name}: {b * a.new_tokens / s:.1f} tokens/s (whole call, prefill included)"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("matmul")
    m.add_argument("--m", type=int, default=1024)
    m.add_argument("--n", type=int, default=1024)
    m.add_argument("--k", type=int, default=1024)
    m.add_argument("--weight-t", action="store_true")
    m.add_argument("--a-t", action="store_true")
    m.add_argument("--weights", type=int, default=1, help="distinct B matrices per rep (past the cache: B from memory)")
    m.add_argument("--reps", type=int, default=7)
    m.add_argument("--warmup", type=int, default=2)
    t = sub.add_parser("attention")
    t.add_argument("--b", type=int, default=1)
    t.add_argument("--t", type=int, default=512)
    t.add_argument("--past", type=int, default=0)
    t.add_argument("--heads", type=int, default=14)
    t.add_argument("--kv-heads", type=int, default=2)
    t.add_argument("--head-dim", type=int, default=64)
    t.add_argument("--backward", action="store_true")
    t.add_argument("--reps", type=int, default=5)
    t.add_argument("--warmup", type=int, default=1)
    d = sub.add_parser("dpo")
    d.add_argument("--pairs", type=int, default=2)
    d.add_argument("--prompt-len", type=int, default=64)
    d.add_argument("--completion-len", type=int, default=64)
    d.add_argument("--steps", type=int, default=3)
    d.add_argument("--model", help="a Hugging Face checkpoint directory (trained in f32)")
    d.add_argument("--gradient-checkpointing", action="store_true")
    g = sub.add_parser("generate")
    g.add_argument("--batch", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    g.add_argument("--prompt-len", type=int, default=128)
    g.add_argument("--new-tokens", type=int, default=32)
    g.add_argument("--reps", type=int, default=3)
    g.add_argument("--model", help="a Hugging Face checkpoint directory (run in f32)")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    g.add_argument("--top-k", type=int, default=0, help="0: off")
    g.add_argument("--top-p", type=float, default=1.0, help="1: off")
    a = p.parse_args()
    global DEVICE
    DEVICE = a.device
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    {"matmul": matmul, "attention": attention, "dpo": dpo, "generate": generate}[a.what](a)


if __name__ == "__main__":
    main()
