"""Read a GGUF file that `ponder save` wrote with llama.cpp's own Python reader (the `gguf`
package on PyPI) and check it against the Hugging Face directory it came from: every tensor
(dequantized by gguf-py, llama.cpp's q/k interleave undone as transformers does), the
tokenizer (tokens, merges, special ids) and the chat template.

    ponder save --model HF_DIR --out model.gguf [--dtype f32|f16|bf16|q8_0]
    python3 models/reference/check_gguf.py --gguf model.gguf --hf HF_DIR [--tol 0]

Needs only numpy and gguf. Exits non-zero, naming the first difference, on a mismatch.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--hf", required=True)
ap.add_argument("--tol", type=float, default=0.0,
                help="max |diff| allowed per tensor (0: bit-exact; a Q8_0 tensor is compared with gguf-py's own quantization of the original)")
a = ap.parse_args()


def fail(msg):
    print("MISMATCH:", msg)
    sys.exit(1)


def read_safetensors(path):
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        data = fh.read()
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": None}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        raw = data[s:e]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=kinds[info["dtype"]]).astype(np.float32)
        out[name] = arr.reshape(info["shape"])
    return out


r = GGUFReader(a.gguf)
field = lambda k: r.fields[k].contents() if k in r.fields else None
arch = field("general.architecture")
cfg = json.load(open(os.path.join(a.hf, "config.json")))
hf = read_safetensors(os.path.join(a.hf, "model.safetensors"))

NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}


def hf_name(g):
    base, kind = g.rsplit(".", 1)
    if base in NAMES:
        return NAMES[base] + "." + kind
    _, n, mod = base.split(".", 2)
    return "model.layers.%s.%s.%s" % (n, LAYER[mod], kind)


def unpermute(w, n_head):
    # transformers' reverse of llama.cpp's permute
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


heads = cfg["num_attention_heads"]
kv = cfg.get("num_key_value_heads", heads)
seen = set()
worst = 0.0
def llama3_rope_factors():
    # as llama.cpp's convert_hf_to_gguf.py computes them for Llama 3.1 rope scaling
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    base = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    factor, old = rp["factor"], rp["original_max_position_embeddings"]
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


for t in r.tensors:
    if t.name == "rope_freqs.weight":
        x = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        want = llama3_rope_factors()
        if x.shape != want.shape or np.max(np.abs(x - want) / want) > 1e-6:
            fail("rope_freqs.weight is %s, llama.cpp's converter makes %s" % (x, want))
        continue
    name = hf_name(t.name)
    x = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape.tolist())])
    if arch == "llama" and ".attn_q." in t.name:
        x = unpermute(x, heads)
    if arch == "llama" and ".attn_k." in t.name:
        x = unpermute(x, kv)
    if name not in hf:
        fail("tensor %s (%s) is not in the Hugging Face directory" % (t.name, name))
    want = hf[name]
    if t.tensor_type == GGMLQuantizationType.Q8_0:
        # what gguf-py's own Q8_0 quantizer makes of the original (its blocks are rows)
        want = dequantize(quantize(want, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0).reshape(want.shape)
    if x.shape != want.shape:
        fail("tensor %s: shape %s, expected %s" % (t.name, x.shape, want.shape))
    d = float(np.max(np.abs(x - want))) if x.size else 0.0
    worst = max(worst, d)
    if d > a.tol:
        fail("tensor %s (%s): max |diff| %.3e > %.1e" % (t.name, t.tensor_type.name, d, a.tol))
    seen.add(name)
missing = set(hf) - seen
if missing:
    fail("tensors missing from the GGUF file: %s" % sorted(missing)[:5])

tok = json.load(open(os.path.join(a.hf, "tokenizer.json")))
vocab = dict(tok["model"]["vocab"])
for t in tok.get("added_tokens", []):
    vocab[t["content"]] = t["id"]
tokens = field("tokenizer.ggml.tokens")
for text, i in vocab.items():
    if tokens[i] != text:
        fail("token %d is %r in the GGUF file, %r in tokenizer.json" % (i, tokens[i], text))
merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
if list(field("tokenizer.ggml.merges") or []) != merges:
    fail("merges differ")
tc_path = os.path.join(a.hf, "tokenizer_config.json")
tc = json.load(open(tc_path)) if os.path.exists(tc_path) else {}
template = tc.get("chat_template")
jinja = os.path.join(a.hf, "chat_template.jinja")
if os.path.exists(jinja):
    template = open(jinja).read()
if field("tokenizer.chat_template") != template:
    fail("chat template differs")
eos = tc.get("eos_token")
eos = eos["content"] if isinstance(eos, dict) else eos
if eos is not None and tokens[int(field("tokenizer.ggml.eos_token_id"))] != eos:
    fail("eos token differs")
print("ok: gguf-py reads %d tensors (max |diff| %.3e), %d tokens, %d merges and the chat template as in %s"
      % (len(r.tensors), worst, len(tokens), len(merges), a.hf))
