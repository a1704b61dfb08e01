"""Dump a local Hugging Face model's logits for a prompt, for `ponder compare`.

    python3 models/reference/dump_logits.py --model DIR --prompt "The answer is" --out ref.safetensors
    ponder compare --model DIR --reference ref.safetensors

The file holds `input_ids` (int32, the tokenised prompt) and `logits` (T x V, float32),
computed in float32 on the CPU. Nothing is downloaded: DIR is a local directory.
"""

import argparse

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompt", default="The answer is")
ap.add_argument("--out", required=True)
ap.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, local_files_only=True).eval()
if a.chat:
    ids = tok.apply_chat_template([{"role": "user", "content": a.prompt}], add_generation_prompt=True, tokenize=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
else:
    ids = tok(a.prompt, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(ids).logits[0].float()
save_file({"input_ids": ids[0].to(torch.int32).contiguous(), "logits": logits.contiguous()}, a.out)
print(f"wrote {a.out}: {ids.shape[1]} tokens x {logits.shape[1]} logits")
