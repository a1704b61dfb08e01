"""Check that a LoRA adapter written by `ponder dpo/sft --lora-r ...` loads in PEFT and
gives the same logits as the merged model ponder writes with --merge-lora.

    ponder dpo --model BASE --data D --out A --lora-r 4 ...
    ponder dpo --model BASE --data D --out M --lora-r 4 --merge-lora ...   (same run)
    python3 models/reference/check_adapter.py --base BASE --adapter A --merged M
"""

import argparse

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True)
ap.add_argument("--adapter", required=True)
ap.add_argument("--merged", required=True)
ap.add_argument("--tol", type=float, default=1e-4)
a = ap.parse_args()

ids = torch.tensor([[5, 77, 300, 12, 9, 41, 200, 33]])
base = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32, local_files_only=True).eval()
with torch.no_grad():
    plain = base(ids).logits
peft_model = PeftModel.from_pretrained(base, a.adapter).eval()
merged = AutoModelForCausalLM.from_pretrained(a.merged, dtype=torch.float32, local_files_only=True).eval()
with torch.no_grad():
    x, y = peft_model(ids).logits, merged(ids).logits
d = (x - y).abs().max().item()
moved = (x - plain).abs().max().item()
print(f"PEFT adapter vs ponder-merged model: max |diff| = {d:.3e}; the adapter moved the logits by up to {moved:.3e}")
assert moved > 1e-3, "the adapter changes nothing"
assert d <= a.tol, "PEFT's view of the adapter differs from ponder's merge"
print("ok: peft loads the adapter and agrees with ponder")
