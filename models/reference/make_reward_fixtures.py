"""Build tiny reward-model checkpoints under models/fixtures/ and their PyTorch scores.

Run from the repository root with torch and transformers installed, after
make_fixtures.py (the tokenizers are copied from its qwen2-tied and llama-gqa fixtures):

    python3 models/reference/make_reward_fixtures.py

CI does not run this; its outputs are committed.

    qwen2-reward   Qwen2ForSequenceClassification, num_labels 1, pad <|endoftext|>
    llama-reward   LlamaForSequenceClassification, num_labels 3, pad </s>

Each directory is a Hugging Face model directory plus reference.safetensors and
reference.json. reference.json lists (instruction, answer) pairs and the text that
transformers' apply_chat_template renders for [user: instruction, assistant: answer].
The texts are tokenised as apply_chat_template(tokenize=True) does (the template holds any
BOS; no special tokens are added). reference.safetensors holds what the model's forward
gives for them batched with padding (the tokenizer's side, attention mask on), as
transformers computes it:

    input_ids        (B, T) int32, padded with pad_token_id
    attention_mask   (B, T) int32
    scores           (B, num_labels) float32: the score head at the last non-pad token

One answer ends in the pad token itself, so the "last non-pad token" rule is exercised:
transformers reads the score one position earlier there.
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file

from make_fixtures import randomize  # every parameter random, norms and biases included

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")

PAIRS = [
    ("What is 12 plus 30?", "12 + 30 = 42. The answer is 42."),
    ("What is 12 plus 30?", "The answer is 41."),
    ("Is 17 prime?", "It is not divisible by 2, 3 or 5, so yes, 17 is prime."),
    ("Say hello.", "Hello!"),
    ("A farmer has 7 cows and buys 5 more. How many cows?", "7 + 5 = 12. Answer: 12."),
]


def build(name, arch, tok_from, num_labels, pad_token, seed):
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig,
                              Qwen2Config)

    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(ROOT, tok_from, f), os.path.join(d, f))
    tok = AutoTokenizer.from_pretrained(d)
    pad = tok.convert_tokens_to_ids(pad_token)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  rms_norm_eps=1e-5, num_labels=num_labels, pad_token_id=pad,
                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                  tie_word_embeddings=False)
    cfg = (LlamaConfig if arch == "llama" else Qwen2Config)(**common)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg).float()
    randomize(model, seed)
    model.eval()
    model.save_pretrained(d, safe_serialization=True)

    pairs = list(PAIRS)
    pairs.append(("Say hello.", "Hello!" + pad_token))
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]
    texts = [tok.apply_chat_template(m, tokenize=False) for m in msgs]
    ids = []
    for m in msgs:
        out = tok.apply_chat_template(m, tokenize=True)
        ids.append(list(out["input_ids"] if hasattr(out, "keys") else out))
    # batch them as a padded batch with its attention mask (the tokenizer's padding side)
    T = max(len(x) for x in ids)
    left = tok.padding_side == "left"
    input_ids = torch.tensor([([pad] * (T - len(x)) + x) if left else (x + [pad] * (T - len(x))) for x in ids])
    mask = torch.tensor([([0] * (T - len(x)) + [1] * len(x)) if left else ([1] * len(x) + [0] * (T - len(x)))
                         for x in ids])
    enc = {"input_ids": input_ids, "attention_mask": mask}
    with torch.no_grad():
        scores = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    save_file(
        {
            "input_ids": enc["input_ids"].to(torch.int32).contiguous(),
            "attention_mask": enc["attention_mask"].to(torch.int32).contiguous(),
            "scores": scores.float().contiguous(),
        },
        os.path.join(d, "reference.safetensors"),
    )
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"pairs": [{"instruction": q, "answer": a, "text": t} for (q, a), t in zip(pairs, texts)],
                   "padding_side": tok.padding_side}, f, indent=2, ensure_ascii=False)
    print(name, "scores", scores.tolist())


if __name__ == "__main__":
    build("qwen2-reward", "qwen2", "qwen2-tied", 1, "<|endoftext|>", 11)
    build("llama-reward", "llama", "llama-gqa", 3, "</s>", 12)
