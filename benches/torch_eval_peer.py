#!/usr/bin/env python3
"""The Hugging Face peer of `ponder eval --samples K --temperature T --chat`: the same
questions, wrapped in the model's chat template as one user message, sampled K times each
with `model.generate` in static batches of `--batch` questions (x K rows, left padding),
stopping at EOS or `--max-new-tokens`. It prints the wall time of the sampling, the tokens
generated (up to and without the EOS) and the rows-busy fraction of the static batches.

    ~/peer/bin/python benches/torch_eval_peer.py --model DIR --data q.jsonl \
        --question-field passage,question --samples 4 --temperature 0.7 \
        --max-new-tokens 192 --batch 24

Runs on the CPU in f32 by default (ponder loads f32); `--device cuda` for a GPU.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--question-field", default="question")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).to(a.device)
    model.eval()
    fields = a.question_field.split(",")
    qs = []
    with open(a.data) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                # each column trimmed, then joined with a space, as ponder joins them
                qs.append(" ".join(str(row[k]).strip() for k in fields))
    if a.limit:
        qs = qs[: a.limit]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in qs
    ]
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    generated, steps_x_rows, prompt_tokens = 0, 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), a.batch):
            enc = tok(prompts[i : i + a.batch], return_tensors="pt", padding=True, add_special_tokens=False).to(a.device)
            prompt_tokens += int(enc["attention_mask"].sum())
            out = model.generate(
                **enc,
                do_sample=a.temperature > 0,
                temperature=a.temperature if a.temperature > 0 else None,
                top_k=0,
                top_p=1.0,
                max_new_tokens=a.max_new_tokens,
                num_return_sequences=a.samples,
                pad_token_id=pad,
                eos_token_id=sorted(eos),
            )
            new = out[:, enc["input_ids"].shape[1] :]
            steps_x_rows += new.shape[0] * new.shape[1]
            for row in new.tolist():
                n = 0
                for t in row:
                    if t in eos:
                        break
                    n += 1
                generated += n
    if a.device != "cpu":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rows = len(prompts) * a.samples
    print(
        f"torch eval-sampling: {len(prompts)} questions x {a.samples} samples, batch {a.batch}, "
        f"T={a.temperature}, max {a.max_new_tokens}: {dt:.2f} s, {generated} tokens generated "
        f"(mean {generated / rows:.1f}), {generated / dt:.1f} tok/s, rows busy "
        f"{100.0 * (generated + rows) / max(steps_x_rows, 1):.1f}%, prompt tokens {prompt_tokens}, "
        f"threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
