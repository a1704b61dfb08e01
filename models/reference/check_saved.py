"""Check that a directory written by `ponder save` (or by training) loads unchanged in
transformers and gives the same logits as the directory it came from.

    ponder save --model models/fixtures/qwen2-tied --out /tmp/saved
    python3 models/reference/check_saved.py --original models/fixtures/qwen2-tied --saved /tmp/saved
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--original", required=True)
ap.add_argument("--saved", required=True)
ap.add_argument("--tol", type=float, default=1e-5)
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(a.saved, local_files_only=True)
ids = torch.tensor([tok("Question: what is 12 plus 30?").input_ids])
out = {}
for name in ["original", "saved"]:
    m = AutoModelForCausalLM.from_pretrained(getattr(a, name), dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        out[name] = m(ids).logits
d = (out["original"] - out["saved"]).abs().max().item()
print(f"max |logits(original) - logits(saved)| = {d:.3e} over {ids.shape[1]} tokens")
assert d <= a.tol, f"saved model differs by {d}"
print("ok: transformers loads the saved directory and matches")
