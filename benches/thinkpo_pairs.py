#!/usr/bin/env python3
"""ThinkPO-shaped preference pairs for timing `ponder dpo --padding-free` against padding.

Chosen answers are long chains of arithmetic reasoning (200-1,900 tokens by default),
rejected ones short (4-50 tokens), as in ThinkPO (a long chain of thought chosen over a
short answer). Lengths are counted with the model's own tokenizer (the Hugging Face
`tokenizers` package) and drawn uniformly from a seed, so the file is the same each run.

    ~/peer/bin/python benches/thinkpo_pairs.py --tokenizer MODEL_DIR --n 8 --out pairs.jsonl
"""
import argparse
import json
import random

from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="model directory with tokenizer.json")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--chosen", default="200,1900", help="chosen completion tokens MIN,MAX")
    ap.add_argument("--rejected", default="4,50", help="rejected completion tokens MIN,MAX")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    tok = Tokenizer.from_file(f"{a.tokenizer}/tokenizer.json")
    count = lambda s: len(tok.encode(s, add_special_tokens=False).ids)
    rng = random.Random(a.seed)
    cmin, cmax = map(int, a.chosen.split(","))
    rmin, rmax = map(int, a.rejected.split(","))

    def words(target, first):
        """Reasoning lines until `target` tokens, then cut back to exactly `target`."""
        lines, v = [first], rng.randint(10, 99)
        while count("\n".join(lines)) < target:
            x = rng.randint(2, 99)
            op = rng.choice(["+", "-", "*"])
            r = v + x if op == "+" else v - x if op == "-" else v * x
            lines.append(f"Step {len(lines)}: {v} {op} {x} = {r}, so we carry {r} forward.")
            v = r % 1000
        ids = tok.encode("\n".join(lines), add_special_tokens=False).ids[:target]
        return tok.decode(ids)

    with open(a.out, "w") as f:
        for i in range(a.n):
            q = f"Question {i}: start from {rng.randint(10, 99)} and apply the steps. What is left?"
            chosen = words(rng.randint(cmin, cmax), "Let me think step by step.")
            rejected = words(rng.randint(rmin, rmax), "The answer is")
            f.write(json.dumps({"prompt": q, "chosen": chosen, "rejected": rejected}) + "\n")


if __name__ == "__main__":
    main()
