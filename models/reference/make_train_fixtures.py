"""PyTorch references for ponder's SFT and DPO trainers, on the qwen2-tied fixture.

    python3 models/reference/make_train_fixtures.py            # writes models/fixtures/train/
    python3 models/reference/make_train_fixtures.py --check-trl   # also runs TRL's DPOTrainer

Tokenisation follows TRL: prompt and completion tokenised separately without special
tokens, a BOS in front when the tokenizer has one and the prompt lacks it, EOS appended
to every completion, loss and log-probs over completion tokens only.

Writes train/dpo.safetensors and train/sft.safetensors with:
    logps.chosen, logps.rejected   per-example summed completion log-probs (policy)
    loss                           the loss at the start (policy = reference)
    grad.<hf name>                 every parameter's gradient of that loss
    steps.loss, steps.grad_norm    5 AdamW steps (lr 1e-4, constant, no warmup, no weight
                                   decay, no clipping, all examples in one batch)
    loss.<type>                    (DPO) every loss type after the 5 steps, against the
                                   starting model as reference, beta 0.1, label smoothing 0.1
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
MODEL = os.path.join(ROOT, "qwen2-tied")
OUT = os.path.join(ROOT, "train")

PAIRS = [
    {"prompt": "Question: what is 12 plus 30?", "chosen": " 12 + 30 = 42. The answer is 42.", "rejected": " 40."},
    {"prompt": "Is 17 prime?", "chosen": " 17 is not divisible by 2, 3 or 5, so yes.", "rejected": " No."},
    {"prompt": "Alice has 3 apples, Bob twice as many. Total?", "chosen": " Bob has 6, so 3 + 6 = 9.", "rejected": " 6 apples."},
    {"prompt": "What is 9 times 8?", "chosen": " 9 * 8 = 72.", "rejected": " 9 * 8 = 81, I think."},
]
SFT = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]


def tokenize(tok, prompt, completion):
    p = tok(prompt, add_special_tokens=False).input_ids
    c = tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
    if tok.bos_token_id is not None and (not p or p[0] != tok.bos_token_id):
        p = [tok.bos_token_id] + p
    return p, c


def batch(tok, rows):
    """rows: list of (prompt_ids, completion_ids) -> right-padded ids, labels (-100 off completion)."""
    T = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), T), 0, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        seq = p + c
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(c)
    return ids, labels


def seq_logps(model, ids, labels):
    """Per-row sum of log p(token) over completion tokens, and per-token count."""
    logits = model(ids).logits[:, :-1].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    lp = torch.gather(logits.log_softmax(-1), 2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(-1), mask.sum(-1), logits, mask


def dpo_loss(pc, pr, rc, rr, beta, kind, eps=0.0):
    logits = (pc - pr) - (rc - rr)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    if kind == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if kind == "hinge":
        return torch.relu(1 - beta * logits)
    if kind == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    raise ValueError(kind)


def grad_norm(model):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


def load():
    m = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).train()
    # no dropout in these models; train() only matters for completeness
    return m


def dpo(tok):
    beta = 0.1
    rows_c = [tokenize(tok, p["prompt"], p["chosen"]) for p in PAIRS]
    rows_r = [tokenize(tok, p["prompt"], p["rejected"]) for p in PAIRS]
    ids, labels = batch(tok, rows_c + rows_r)
    n = len(PAIRS)
    ref = load().eval()
    with torch.no_grad():
        ref_lp, _, _, _ = seq_logps(ref, ids, labels)
    rc, rr = ref_lp[:n], ref_lp[n:]
    model = load()
    out = {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, norms = [], []
    for step in range(5):
        opt.zero_grad()
        lp, _, _, _ = seq_logps(model, ids, labels)
        pc, pr = lp[:n], lp[n:]
        loss = dpo_loss(pc, pr, rc, rr, beta, "sigmoid").mean()
        loss.backward()
        if step == 0:
            out["logps.chosen"] = pc.detach()
            out["logps.rejected"] = pr.detach()
            out["loss"] = loss.detach().reshape(1)
            for name, p in model.named_parameters():
                out["grad." + name] = p.grad.detach().clone()
        losses.append(loss.item())
        norms.append(grad_norm(model))
        opt.step()
    out["steps.loss"] = torch.tensor(losses)
    out["steps.grad_norm"] = torch.tensor(norms)
    with torch.no_grad():
        lp, cnt, _, _ = seq_logps(model, ids, labels)
        pc, pr = lp[:n], lp[n:]
        for kind in ["sigmoid", "ipo", "hinge", "robust"]:
            if kind == "ipo":
                # IPO compares log-probs averaged over completion tokens (as TRL)
                l = dpo_loss(pc / cnt[:n], pr / cnt[n:], rc / cnt[:n], rr / cnt[n:], beta, kind)
            else:
                l = dpo_loss(pc, pr, rc, rr, beta, kind, eps=0.1)
            out["loss." + kind] = l.mean().reshape(1)
    save_file({k: v.float().contiguous() for k, v in out.items()}, os.path.join(OUT, "dpo.safetensors"))
    print("dpo: loss", out["loss"].item(), "steps", losses, "grad norms", norms)
    return losses, norms


def sft(tok):
    rows = [tokenize(tok, e["prompt"], e["completion"]) for e in SFT]
    ids, labels = batch(tok, rows)
    model = load()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    out, losses, norms = {}, [], []
    for step in range(5):
        opt.zero_grad()
        lp, cnt, _, _ = seq_logps(model, ids, labels)
        loss = -lp.sum() / cnt.sum()  # mean NLL over every completion token of the batch
        loss.backward()
        if step == 0:
            out["loss"] = loss.detach().reshape(1)
            for name, p in model.named_parameters():
                out["grad." + name] = p.grad.detach().clone()
        losses.append(loss.item())
        norms.append(grad_norm(model))
        opt.step()
    out["steps.loss"] = torch.tensor(losses)
    out["steps.grad_norm"] = torch.tensor(norms)
    save_file({k: v.float().contiguous() for k, v in out.items()}, os.path.join(OUT, "sft.safetensors"))
    print("sft: steps", losses, "grad norms", norms)


def write_arith(path, n=48, seed=7):
    """A few dozen synthetic preference pairs: a worked sum (chosen) against a bare wrong
    answer (rejected). Used by the end-to-end test and as the README's bundled default."""
    import random

    r = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = r.randint(2, 60), r.randint(2, 60)
            wrong = a + b + r.choice([-3, -2, -1, 1, 2, 10])
            f.write(json.dumps({"prompt": f"Question: what is {a} plus {b}?",
                                "chosen": f" {a} + {b} = {a + b}. The answer is {a + b}.",
                                "rejected": f" The answer is {wrong}."}) + "\n")


def check_trl(tok, losses, norms):
    """Run TRL's DPOTrainer on the same pairs and settings; print its logged numbers."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = load()
    args = DPOConfig(output_dir="/tmp/trl-dpo", per_device_train_batch_size=len(PAIRS), learning_rate=1e-4,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1e9, max_steps=5,
                     beta=0.1, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                     dataloader_drop_last=False, remove_unused_columns=False, bf16=False, fp16=False)
    tr = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tok)
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    print("TRL DPOTrainer:")
    for i, h in enumerate(logs):
        print(f"  step {i + 1}: loss {h['loss']:.6f} (ours {losses[i]:.6f}), grad_norm {h.get('grad_norm', float('nan')):.6f} (ours {norms[i]:.6f}), "
              f"rewards/margins {h.get('rewards/margins')}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-trl", action="store_true")
    ap.add_argument("--only-data", action="store_true", help="rewrite the JSONL files only")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    write_arith(os.path.join(OUT, "arith_pairs.jsonl"))
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(MODEL)
    with open(os.path.join(OUT, "pairs.jsonl"), "w") as f:
        for p in PAIRS:
            f.write(json.dumps(p) + "\n")
    with open(os.path.join(OUT, "sft.jsonl"), "w") as f:
        for e in SFT:
            f.write(json.dumps(e) + "\n")
    if a.only_data:
        raise SystemExit(0)
    losses, norms = dpo(tok)
    sft(tok)
    if a.check_trl:
        check_trl(tok, losses, norms)
