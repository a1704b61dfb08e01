"""Build the tiny test checkpoints under models/fixtures/ and their PyTorch reference dumps.

Run from the repository root with torch, transformers and tokenizers installed:

    python3 models/reference/make_fixtures.py

CI does not run this; its outputs are committed. Each fixture directory is a Hugging Face
model directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json) plus reference.safetensors with what the tests compare against:

    input_ids            the fixed forward input (int32)
    logits               (T, V) float32 logits for input_ids
    hidden.{i}           residual stream after the embedding (i=0) and after layer i-1
    final_norm           output of the final RMSNorm
    sft.input_ids        one SFT example: prompt + completion (int32)
    sft.labels           -100 on prompt positions (int32), HF causal-LM convention
    sft.loss             masked mean NLL of the next token
    grad.<hf name>       gradient of sft.loss with respect to every parameter
    greedy.prompt        prompt ids for greedy decoding
    greedy.ids           prompt + 20 greedy tokens from model.generate (no EOS stop)

Every parameter is random, norms and biases included. The bf16 fixture stores bf16
weights; its references are computed in float32 from those bf16 values, which is what
ponder does (16-bit storage, f32 compute).
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")

CORPUS = [
    "Question: what is 12 plus 30? Let us think step by step. 12 + 30 = 42. The answer is 42.",
    "Question: a farmer has 7 cows and buys 5 more. How many cows? 7 + 5 = 12. Answer: 12.",
    "We compute 9 times 8 = 72, then subtract 2 to get 70. So the final answer is 70.",
    "First, note that 100 / 4 = 25. Next, 25 * 3 = 75. Therefore the result is 75.",
    "Think carefully: if x + 3 = 10 then x = 7. Check: 7 + 3 = 10. Correct.",
    "The quick brown fox jumps over the lazy dog. Reasoning is a chain of small steps.",
    "Hello! How can I help you today? Please explain your reasoning before answering.",
    "<think> Let me reason about this. </think> The answer is 5.",
    "Alice has 3 apples, Bob has twice as many. Together they have 3 + 6 = 9 apples.",
    "Is 17 prime? It is not divisible by 2, 3 or 5, and 5 * 5 > 17, so yes, 17 is prime.",
]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]

# The ChatML template Qwen2.5 ships in its tokenizer_config.json.
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# A Llama-2-style template: BOS in the template, [INST] turns.
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] | trim + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{% else %}{{ raise_exception('Only user, system and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)


def train_tokenizer(vocab_size=384):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def write_tokenizer(tok, d, style):
    tok = Tokenizer.from_str(tok.to_str())
    if style == "llama":
        # Llama-style: BOS <s> prepended by the post-processor, EOS </s>.
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
        cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "add_bos_token": True, "chat_template": LLAMA2_TEMPLATE}
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        cfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": QWEN25_TEMPLATE}
    cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, "clean_up_tokenization_spaces": False})
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return tok


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def to_4x_config(path):
    """Rewrite a transformers-5 config.json in the transformers-4 spelling."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = rp.get("rope_theta", 10000.0)
    rt = rp.get("rope_type", "default")
    if rt != "default":
        # older configs spell the key "type"
        c["rope_scaling"] = {("type" if k == "rope_type" else k): v for k, v in rp.items() if k != "rope_theta"}
    else:
        c["rope_scaling"] = None
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    with open(path, "w") as f:
        json.dump(c, f, indent=2)


def build(name, arch, tok_style, dtype, seed, spelling, **kw):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, GenerationConfig

    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = write_tokenizer(TOK, d, tok_style)
    V = tok.get_vocab_size()
    eos = tok.token_to_id("</s>" if tok_style == "llama" else "<|im_end|>")
    bos = tok.token_to_id("<s>") if tok_style == "llama" else None
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=bos, eos_token_id=eos)
    common.update(kw)
    cfg = (LlamaConfig if arch == "llama" else Qwen2Config)(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float()
    randomize(model, seed)
    if dtype == torch.bfloat16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(d, safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos], pad_token_id=eos).save_pretrained(d)
    if spelling == "4x":
        to_4x_config(os.path.join(d, "config.json"))
    # reload from disk, as a user would, and compute in float32
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    reference(model, tok, d, V)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, vocab {V}")


def reference(model, tok, d, V):
    out = {}
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, V, (1, 12), generator=g)
    captured = {}

    def hook(key):
        def f(_m, _inp, output):
            captured[key] = (output[0] if isinstance(output, tuple) else output).detach()
        return f

    hs = [model.model.embed_tokens.register_forward_hook(hook("hidden.0"))]
    for i, layer in enumerate(model.model.layers):
        hs.append(layer.register_forward_hook(hook(f"hidden.{i + 1}")))
    hs.append(model.model.norm.register_forward_hook(hook("final_norm")))
    with torch.no_grad():
        logits = model(ids).logits[0]
    for h in hs:
        h.remove()
    out["input_ids"] = ids[0].to(torch.int32)
    out["logits"] = logits.float()
    for k, v in captured.items():
        out[k] = v[0].float().contiguous()

    # one SFT example: prompt tokens masked out of the loss
    prompt = tok.encode("Question: what is 9 times 8?").ids
    completion = tok.encode(" 9 * 8 = 72. The answer is 72.").ids
    sft = torch.tensor([prompt + completion])
    labels = sft.clone()
    labels[0, : len(prompt)] = -100
    model.zero_grad()
    loss = model(sft, labels=labels).loss
    loss.backward()
    out["sft.input_ids"] = sft[0].to(torch.int32)
    out["sft.labels"] = labels[0].to(torch.int32)
    out["sft.loss"] = loss.detach().reshape(1)
    for n, p in model.named_parameters():
        out["grad." + n] = p.grad.detach().float().contiguous()

    # greedy decoding: 20 new tokens, no EOS stop
    gp = torch.tensor([tok.encode("The answer is").ids])
    with torch.no_grad():
        gen = model.generate(gp, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                             attention_mask=torch.ones_like(gp))
    out["greedy.prompt"] = gp[0].to(torch.int32)
    out["greedy.ids"] = gen[0].to(torch.int32)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "reference.safetensors"))


def chat_fixtures():
    """What transformers' apply_chat_template renders, for the template tests."""
    from transformers import PreTrainedTokenizerFast

    convs = [
        ([{"role": "user", "content": "What is 2+2?"}], True),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}], True),
        ([{"role": "user", "content": "Solve x+1=3"}, {"role": "assistant", "content": "x = 2"}], False),
        ([{"role": "user", "content": "Weather?"},
          {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
          {"role": "tool", "content": "18C"}], True),
    ]
    cases = []
    for name in ["qwen2-tied", "llama-gqa"]:
        t = PreTrainedTokenizerFast.from_pretrained(os.path.join(ROOT, name))
        for msgs, agp in convs:
            if name == "llama-gqa" and any(m["role"] == "tool" for m in msgs):
                continue
            text = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
            ids = t.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            cases.append({"model": name, "messages": msgs, "add_generation_prompt": agp, "text": text, "ids": list(ids)})
    with open(os.path.join(ROOT, "chat_template_cases.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    os.makedirs(ROOT, exist_ok=True)
    TOK = train_tokenizer()
    # GQA, untied, transformers-4 config spelling, f32
    build("llama-gqa", "llama", "llama", torch.float32, 1, "4x", tie_word_embeddings=False)
    # tied embeddings, qkv bias, GQA, transformers-5 spelling, f32
    build("qwen2-tied", "qwen2", "chatml", torch.float32, 2, "5x", tie_word_embeddings=True)
    # llama3 rope scaling, explicit head_dim != hidden/heads, MHA, attention and mlp bias
    build("llama3-rope", "llama", "llama", torch.float32, 3, "5x", tie_word_embeddings=False, num_key_value_heads=4,
          head_dim=24, attention_bias=True, mlp_bias=True,
          rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    # bf16 storage, linear rope scaling, transformers-4 spelling
    build("qwen2-bf16", "qwen2", "chatml", torch.bfloat16, 4, "4x", tie_word_embeddings=False,
          rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    chat_fixtures()
