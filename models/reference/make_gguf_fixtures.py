"""Make models/fixtures/gguf/quant_types.{gguf,safetensors}: one small tensor of every ggml
type ponder reads, filled with random blocks (random quants, random finite f16 scales), and
the f32 values gguf-py's own dequantizer makes of each. tests/gguf.rs holds ponder's
dequantization to them bit for bit.

    pip install gguf numpy safetensors
    python3 models/reference/make_gguf_fixtures.py
"""

import os

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file

rng = np.random.default_rng(20261205)
out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gguf")
os.makedirs(out, exist_ok=True)

# byte offsets of the f16 scale fields in each block (the rest is random quants)
SCALES = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
          Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}
ROWS = 3

w = GGUFWriter(os.path.join(out, "quant_types.gguf"), "llama")
want = {}
for qt, offs in SCALES.items():
    per, size = GGML_QUANT_SIZES[qt]
    cols = 2 * 256 if per == 256 else 4 * 32
    nblk = ROWS * cols // per
    raw = rng.integers(0, 256, size=(nblk, size), dtype=np.uint8)
    for o in offs:
        raw[:, o:o + 2] = rng.uniform(-2, 2, size=nblk).astype(np.float16).view(np.uint8).reshape(nblk, 2)
    raw = raw.reshape(ROWS, cols // per * size)
    w.add_tensor(qt.name, raw, raw_dtype=qt)
    want[qt.name] = dequantize(raw, qt).astype(np.float32).reshape(ROWS, cols)
for name, dt, qt in [("F32", np.float32, Q.F32), ("F16", np.float16, Q.F16)]:
    x = rng.standard_normal((ROWS, 40)).astype(dt)
    w.add_tensor(name, x, raw_dtype=qt)
    want[name] = x.astype(np.float32)
bf = (rng.standard_normal((ROWS, 40)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
w.add_tensor("BF16", bf.view(np.uint8).reshape(ROWS, 80), raw_dtype=Q.BF16)
want["BF16"] = (bf.astype(np.uint32) << 16).view(np.float32)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
save_file(want, os.path.join(out, "quant_types.safetensors"))
print({k: v.shape for k, v in want.items()})
