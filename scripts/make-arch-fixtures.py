#!/usr/bin/env python3
"""Make rill's tiny random-weight checkpoints of every decoder family it runs, and (on request) their goldens.

    python3 scripts/make-arch-fixtures.py                # default (CI): HF folders + GGUF files under models/arch/
    python3 scripts/make-arch-fixtures.py --goldens      # + tests/fixtures/arch-transformers-golden.json and
                                                         #   the SentencePiece vocabulary tests/fixtures/spm-vocab.json
    python3 scripts/make-arch-fixtures.py --quantize target/release/rill   # + llama-wide's quantized mixes
    python3 scripts/make-arch-fixtures.py --quantize target/release/rill --llamacpp
                                                         # + tests/fixtures/arch-llamacpp-golden.json and
                                                         #   tests/fixtures/tokenizer-llamacpp-golden.json

For each family (llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, gemma3) the default mode writes:

    models/arch/<name>/                 a HuggingFace folder: config.json, model.safetensors (f32),
                                        GPT-2's tokenizer.json and a tokenizer_config.json with a ChatML template
    models/arch/<name>-f32.gguf         the same weights as GGUF, named, laid out and with metadata as
    models/arch/<name>-q8_0.gguf        llama.cpp's converter writes them (llama's Q and K rows permuted to the
                                        interleaved rotary layout, gemma's norm weights + 1, GPT-2 BPE vocabulary)

Weights are a pure function of (tensor name, element index), as in scripts/make-fixtures.py (whose helpers this
script imports), so every machine writes byte-identical files; Q8_0 rounds as ggml's reference quantizer does.
The default mode needs numpy only (in `.venv-fixtures-lite/`, made on first use). `--goldens` runs transformers
(`.venv-fixtures/`, torch + transformers, a few GB); `--llamacpp` runs llama.cpp through `llama-cpp-python`
(`.venv-llamacpp/`, built from source: ~20 minutes the first time). Both goldens are committed, so CI needs
neither.

Shapes: hidden 256, 4 query heads over 2 kv heads, MLP 512 (rows of whole K-quant blocks), 256 positions, GPT-2's
50 257-token vocabulary.
Families differ as real checkpoints do (qwen2: q/k/v biases; qwen3, gemma3: q/k norms and a head size apart
from hidden / heads; phi3: fused qkv and gate_up; gemma2: soft caps; gemma2/3 and mistral: an 8-position sliding
window, so the golden prompts cross it; gemma3: per-layer rotary bases and linear scaling of the global layers).
"""

import argparse
import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "arch")
TOKENIZER_DIR = os.path.join(ROOT, "models", "gpt2-tokenizer")
TF_GOLDEN = os.path.join(ROOT, "tests", "fixtures", "arch-transformers-golden.json")
TOK_CORPUS = os.path.join(ROOT, "tests", "fixtures", "tokenizer-corpus.json")
SPM_VOCAB = os.path.join(ROOT, "tests", "fixtures", "spm-vocab.json")
TOK_GOLDEN = os.path.join(ROOT, "tests", "fixtures", "tokenizer-llamacpp-golden.json")
LC_GOLDEN = os.path.join(ROOT, "tests", "fixtures", "arch-llamacpp-golden.json")
VENVS = {
    "lite": (os.path.join(ROOT, ".venv-fixtures-lite"), ("numpy",), ["numpy"]),
    "goldens": (os.path.join(ROOT, ".venv-fixtures"), ("numpy", "torch", "transformers", "sentencepiece"),
                ["numpy", "torch", "transformers", "sentencepiece"]),
    "llamacpp": (os.path.join(ROOT, ".venv-llamacpp"), ("numpy", "llama_cpp"),
                 ["numpy", "llama-cpp-python==0.3.36"]),
}

VOCAB = 50257
EOS = 50256
HIDDEN, FF, HEADS, KV_HEADS, POSITIONS = 256, 512, 4, 2, 256
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# The pretrained context of the LongRoPE fixture: golden prompt 1 stays within it (short factors in
# transformers), prompt 2 goes past it (long factors).
LONG_ORIGINAL = 16


def long_factors(head_dim):
    """(short, long) LongRoPE factors, rising across the frequencies as real Phi-3 ones do."""
    half = head_dim // 2
    return [1.0 + 0.02 * i for i in range(half)], [1.0 + 1.5 * i for i in range(half)]


# name: (model_type, layers, head_dim, tied output, extra config)
FAMILIES = {
    "llama": ("llama", 2, 64, False, {}),
    "mistral": ("mistral", 2, 64, False, {"sliding_window": 8}),
    "qwen2": ("qwen2", 2, 64, True, {}),
    "qwen3": ("qwen3", 2, 32, True, {}),
    "phi3": ("phi3", 2, 64, False, {}),
    # Phi-3 / 3.5 long-context (LongRoPE): short factors up to 16 positions, long ones beyond.
    "phi3-long": ("phi3", 2, 64, False, {"_longrope": LONG_ORIGINAL}),
    "gemma": ("gemma", 2, 32, True, {}),
    "gemma2": ("gemma2", 4, 32, True, {"sliding_window": 8, "query_pre_attn_scalar": 32,
                                       "attn_logit_softcapping": 10.0, "final_logit_softcapping": 5.0}),
    "gemma3": ("gemma3_text", 6, 32, True, {"sliding_window": 8, "query_pre_attn_scalar": 32}),
    # Every mix of one family (query heads 4 × 64 = 256 wide too, so every matrix takes K-quants).
    "llama-wide": ("llama", 2, 64, False, {}),
}
# A real-size model for speed comparisons (`--bench-model`, not made by default): 24 layers, hidden 1024,
# 16 query heads over 4 kv heads, MLP 2816, 4096 positions: ~375M parameters, as GGUF f32 and llama.cpp's own
# Q4_K_M and Q8_0.
BENCH = {"llama-bench": ("llama", 24, 64, False, {"_hidden": 1024, "_ff": 2816, "_heads": 16, "_kv_heads": 4,
                                                     "_positions": 4096})}
# GGUF versions (llama.cpp runs mistral checkpoints as `llama`, without the window: no GGUF for the tiny one).
GGUF_FAMILIES = [f for f in FAMILIES if f != "mistral"]
GGUF_TYPES = ("f32", "q8_0")
# Mixes `rill quantize` makes of llama-wide-f32.gguf (`--quantize`, after the build), each checked against llama.cpp.
MIXES = ("q4_k_m", "q5_k_m", "q6_k", "q3_k_m", "q2_k", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16")


def dims(name):
    """(hidden, MLP width) of a family's fixture."""
    extra = FAMILIES[name][4]
    return extra.get("_hidden", HIDDEN), extra.get("_ff", FF)


def heads(name):
    """(query heads, kv heads) of a family's fixture."""
    extra = FAMILIES[name][4]
    return extra.get("_heads", HEADS), extra.get("_kv_heads", KV_HEADS)

# Golden prompts: GPT-2 ids, long enough to cross the sliding window.
PROMPTS = [
    [15496, 11, 995, 0],
    [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 780, 340, 2227, 284, 766, 644, 373, 319, 262, 584,
     1735, 13],
]
NEW_TOKENS = 12


def _load_helpers():
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(ROOT, "scripts", "make-fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


H = _load_helpers()


def log(msg):
    print(f"[make-arch-fixtures] {msg}", flush=True)


def ensure_env(kind):
    venv, mods, pkgs = VENVS[kind]
    if H._have(*mods):
        return
    if os.environ.get("RILL_FIXTURES_REEXEC"):
        sys.exit(f"error: still missing {mods} inside {sys.executable}")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        log(f"creating {os.path.relpath(venv, ROOT)} ({' '.join(pkgs)})")
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    if subprocess.call([py, "-c", "import " + ", ".join(mods)], stderr=subprocess.DEVNULL) != 0:
        log(f"installing {' '.join(pkgs)} into {os.path.relpath(venv, ROOT)}")
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", *pkgs])
    env = dict(os.environ, RILL_FIXTURES_REEXEC="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


# ---------------------------------------------------------------------------
# HuggingFace folders
# ---------------------------------------------------------------------------

def hf_config(name):
    model_type, layers, head_dim, tied, extra = FAMILIES[name]
    hidden, ff = dims(name)
    gemma = model_type.startswith("gemma")
    cfg = {
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gemma": "GemmaForCausalLM",
                           "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}[model_type]],
        "model_type": model_type,
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads(name)[0],
        "num_key_value_heads": heads(name)[1],
        "head_dim": head_dim,
        "max_position_embeddings": POSITIONS,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "pad_token_id": None,
        "attention_dropout": 0.0,
        "dtype": "float32",
    }
    if gemma:
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        cfg["hidden_act"] = "gelu_pytorch_tanh"
    else:
        cfg["hidden_act"] = "silu"
    if model_type == "gemma3_text":
        cfg["rope_parameters"] = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0},
        }
        cfg["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    else:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    if "_longrope" in extra:
        short, long = long_factors(FAMILIES[name][2])
        cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                                  "long_factor": long, "original_max_position_embeddings": extra["_longrope"]}
        cfg["original_max_position_embeddings"] = extra["_longrope"]
    if model_type == "gemma2":
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if model_type == "qwen2":
        cfg["use_sliding_window"] = False
    cfg.update({k: v for k, v in extra.items() if not k.startswith("_")})
    return cfg


def hf_tensors(name):
    """{hf name: f32 array} of a family's checkpoint."""
    model_type, layers, hd, tied, _ = FAMILIES[name]
    HIDDEN, FF = dims(name)  # noqa: N806
    gemma = model_type.startswith("gemma")
    t = {}

    def mat(n, rows, cols, gain=1.0):
        t[n] = H.make_tensor(f"{name}/{n}", (rows, cols), 0.0, gain * (3.0 / cols) ** 0.5)

    def norm(n, width):
        # Gemma stores w for x·(1 + w).
        t[n] = H.make_tensor(f"{name}/{n}", (width,), 0.0 if gemma else 1.0, 0.2)

    t["model.embed_tokens.weight"] = H.make_tensor(f"{name}/embed", (VOCAB, HIDDEN), 0.0,
                                                   0.25 if gemma else 1.0)
    for i in range(layers):
        p = f"model.layers.{i}."
        norm(p + "input_layernorm.weight", HIDDEN)
        q, kv = heads(name)[0] * hd, heads(name)[1] * hd
        if model_type == "phi3":
            mat(p + "self_attn.qkv_proj.weight", q + 2 * kv, HIDDEN)
        else:
            mat(p + "self_attn.q_proj.weight", q, HIDDEN)
            mat(p + "self_attn.k_proj.weight", kv, HIDDEN)
            mat(p + "self_attn.v_proj.weight", kv, HIDDEN)
        if model_type == "qwen2":
            for part, width in (("q", q), ("k", kv), ("v", kv)):
                t[p + f"self_attn.{part}_proj.bias"] = H.make_tensor(f"{name}/{p}{part}.bias", (width,), 0.0, 0.5)
        if model_type in ("qwen3", "gemma3_text"):
            norm(p + "self_attn.q_norm.weight", hd)
            norm(p + "self_attn.k_norm.weight", hd)
        mat(p + "self_attn.o_proj.weight", HIDDEN, q)
        norm(p + "post_attention_layernorm.weight", HIDDEN)
        if model_type in ("gemma2", "gemma3_text"):
            norm(p + "pre_feedforward_layernorm.weight", HIDDEN)
            norm(p + "post_feedforward_layernorm.weight", HIDDEN)
        if model_type == "phi3":
            mat(p + "mlp.gate_up_proj.weight", 2 * FF, HIDDEN)
        else:
            mat(p + "mlp.gate_proj.weight", FF, HIDDEN)
            mat(p + "mlp.up_proj.weight", FF, HIDDEN)
        mat(p + "mlp.down_proj.weight", HIDDEN, FF)
    norm("model.norm.weight", HIDDEN)
    if not tied:
        mat("lm_head.weight", VOCAB, HIDDEN, gain=2.0)
    return t


def write_hf(folder, name):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(name), f, indent=2)
        f.write("\n")
    shutil.copyfile(os.path.join(TOKENIZER_DIR, "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json"), encoding="utf-8") as f:
        tok_cfg = json.load(f)
    tok_cfg["chat_template"] = CHATML
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token_id": EOS, "eos_token_id": [EOS]}, f, indent=2)
        f.write("\n")
    H.write_safetensors(os.path.join(folder, "model.safetensors"), hf_tensors(name), {"format": "pt"})


# ---------------------------------------------------------------------------
# GGUF files, as llama.cpp's converter writes them
# ---------------------------------------------------------------------------

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma": "gemma",
             "gemma2": "gemma2", "gemma3_text": "gemma3"}
HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def permute(w, n_head):
    """llama.cpp's converter: NeoX rotary pairs (i, i + d/2) → interleaved pairs (2i, 2i + 1) for llama."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(name):
    model_type, _, _, _, _ = FAMILIES[name]
    gemma = model_type.startswith("gemma")
    out = []
    for hf, w in sorted(hf_tensors(name).items()):
        if hf == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif hf == "model.norm.weight":
            g = "output_norm.weight"
        elif hf == "lm_head.weight":
            g = "output.weight"
        else:
            rest = hf[len("model.layers."):]
            layer, tail = rest.split(".", 1)
            module, kind = tail.rsplit(".", 1)
            if module == "post_attention_layernorm":
                mapped = "post_attention_norm" if model_type in ("gemma2", "gemma3_text") else "ffn_norm"
            else:
                mapped = HF_TO_GGUF[module]
            g = f"blk.{layer}.{mapped}.{kind}"
        if model_type == "llama" and g.endswith("attn_q.weight"):
            w = permute(w, heads(name)[0])
        if model_type == "llama" and g.endswith("attn_k.weight"):
            w = permute(w, heads(name)[1])
        if gemma and g.endswith("norm.weight"):
            w = (w + 1.0).astype(w.dtype)
        out.append((g, w))
    if "_longrope" in FAMILIES[name][4]:
        import numpy as np
        short, long = long_factors(FAMILIES[name][2])
        out.append(("rope_factors_long.weight", np.asarray(long, dtype=np.float32)))
        out.append(("rope_factors_short.weight", np.asarray(short, dtype=np.float32)))
    return out


def gguf_metadata(name):
    import numpy as np  # noqa: F401
    model_type, layers, hd, _, extra = FAMILIES[name]
    HIDDEN, FF = dims(name)  # noqa: N806
    arch = GGUF_ARCH[model_type]
    m = [
        ("general.architecture", "str", arch),
        ("general.name", "str", "rill tiny fixture"),  # a "phi3" here would make llama.cpp look up "</s>"
        ("general.alignment", "u32", 32),
        (f"{arch}.context_length", "u32", extra.get("_positions", POSITIONS)),
        (f"{arch}.embedding_length", "u32", HIDDEN),
        (f"{arch}.feed_forward_length", "u32", FF),
        (f"{arch}.block_count", "u32", layers),
        (f"{arch}.attention.head_count", "u32", heads(name)[0]),
        (f"{arch}.attention.head_count_kv", "u32", heads(name)[1]),
        (f"{arch}.attention.key_length", "u32", hd),
        (f"{arch}.attention.value_length", "u32", hd),
        (f"{arch}.rope.dimension_count", "u32", hd),
        (f"{arch}.attention.layer_norm_rms_epsilon", "f32", 1e-6),
        (f"{arch}.rope.freq_base", "f32", 1000000.0 if arch == "gemma3" else 10000.0),
    ]
    if arch in ("gemma2", "gemma3"):
        m.append((f"{arch}.attention.sliding_window", "u32", extra["sliding_window"]))
    if arch == "gemma2":
        m.append((f"{arch}.attn_logit_softcapping", "f32", extra["attn_logit_softcapping"]))
        m.append((f"{arch}.final_logit_softcapping", "f32", extra["final_logit_softcapping"]))
    if arch == "gemma3":
        m.append((f"{arch}.rope.scaling.type", "str", "linear"))
        m.append((f"{arch}.rope.scaling.factor", "f32", 2.0))
    if arch == "phi3":
        original = extra.get("_longrope", POSITIONS)
        m.append((f"{arch}.rope.scaling.original_context_length", "u32", original))
        if "_longrope" in extra:  # as llama.cpp's converter derives it from the two contexts
            scale = POSITIONS / original
            m.append((f"{arch}.rope.scaling.attn_factor", "f32", math.sqrt(1 + math.log(scale) / math.log(original))))
    with open(os.path.join(TOKENIZER_DIR, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    with open(os.path.join(TOKENIZER_DIR, "merges.txt"), encoding="utf-8") as f:
        merges = [line for line in f.read().split("\n")[1:] if line]
    m += [
        ("tokenizer.ggml.model", "str", "gpt2"),
        ("tokenizer.ggml.pre", "str", "gpt-2"),
        ("tokenizer.ggml.tokens", "arr_str", tokens),
        ("tokenizer.ggml.token_type", "arr_i32", [3 if i == EOS else 1 for i in range(len(tokens))]),
        ("tokenizer.ggml.merges", "arr_str", merges),
        ("tokenizer.ggml.bos_token_id", "u32", EOS),
        ("tokenizer.ggml.eos_token_id", "u32", EOS),
        ("tokenizer.ggml.add_bos_token", "bool", False),
        ("tokenizer.chat_template", "str", CHATML),
    ]
    return m


GGML_F32, GGML_Q8_0 = 0, 8


def quantize_q8_0(w):
    """ggml's reference Q8_0: blocks of 32, d = max|x| / 127 (stored f16), q = round-half-away(x / d)."""
    import numpy as np
    x = w.astype(np.float32).reshape(-1, 32)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    v = x * inv[:, None]
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)
    out = np.zeros(x.shape[0], dtype=[("d", "<f2"), ("q", "i1", 32)])
    out["d"], out["q"] = d.astype(np.float16), q
    return out.tobytes()


def write_gguf(path, metadata, tensors, qtype):
    import numpy as np

    def s(b):
        b = b.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def kv(key, kind, value):
        out = s(key)
        if kind == "str":
            return out + struct.pack("<I", 8) + s(value)
        if kind == "u32":
            return out + struct.pack("<II", 4, value)
        if kind == "f32":
            return out + struct.pack("<If", 6, value)
        if kind == "bool":
            return out + struct.pack("<I?", 7, value)
        if kind == "arr_str":
            return out + struct.pack("<IIQ", 9, 8, len(value)) + b"".join(s(v) for v in value)
        if kind == "arr_f32":
            return out + struct.pack("<IIQ", 9, 6, len(value)) + np.asarray(value, dtype="<f4").tobytes()
        if kind == "arr_i32":
            return out + struct.pack("<IIQ", 9, 5, len(value)) + np.asarray(value, dtype="<i4").tobytes()
        raise ValueError(kind)

    blobs, infos, offset = [], [], 0
    for name, w in tensors:
        quant = qtype == "q8_0" and w.ndim == 2 and w.shape[1] % 32 == 0
        data = quantize_q8_0(w) if quant else np.ascontiguousarray(w, dtype="<f4").tobytes()
        dims = list(reversed(w.shape))  # ggml order: the innermost dimension first
        infos.append(s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
                     + struct.pack("<IQ", GGML_Q8_0 if quant else GGML_F32, offset))
        pad = -len(data) % 32
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    head += b"".join(kv(*m) for m in metadata) + b"".join(infos)
    head += b"\0" * (-len(head) % 32)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Tokenizer-only GGUF files: every vocabulary type and split rule rill reproduces
# ---------------------------------------------------------------------------

# name: (tokenizer.ggml.model, pre, add_space_prefix)
TOKENIZERS = {
    "gpt2": ("gpt2", "gpt-2", None),
    "smollm": ("gpt2", "smollm", None),
    "llama-bpe": ("gpt2", "llama-bpe", None),
    "qwen2": ("gpt2", "qwen2", None),
    "spm": ("llama", None, True),          # Llama 2, Mistral, TinyLlama, Phi-3
    "spm-nospace": ("llama", None, False),  # Gemma
}


def train_spm_vocab():
    """A SentencePiece BPE vocabulary trained on the test corpora (run once with --goldens; committed).

    Types as llama.cpp's converter writes them: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte."""
    import tempfile
    import sentencepiece as spm
    with open(TOK_CORPUS, encoding="utf-8") as f:
        lines = json.load(f)
    with open(os.path.join(ROOT, "tests", "fixtures", "fidelity-corpus.txt"), encoding="utf-8") as f:
        lines += f.read().split("\n")
    with tempfile.TemporaryDirectory() as d:
        text = os.path.join(d, "corpus.txt")
        with open(text, "w", encoding="utf-8") as f:
            f.write("\n".join(l.replace("\n", " ") for l in lines if l.strip()) + "\n")
        spm.SentencePieceTrainer.train(
            input=text, model_prefix=os.path.join(d, "m"), model_type="bpe", vocab_size=1200,
            hard_vocab_limit=False, byte_fallback=True, character_coverage=0.98,
            user_defined_symbols=["<|im_start|>", "<|im_end|>"], split_digits=True,
            allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
            num_threads=1, minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "m.model"))
        pieces, scores, types = [], [], []
        for i in range(sp.get_piece_size()):
            pieces.append(sp.id_to_piece(i))
            scores.append(float(sp.get_score(i)))
            types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                         else 4 if sp.id_to_piece(i) in ("<|im_start|>", "<|im_end|>") else 1)
    with open(SPM_VOCAB, "w", encoding="utf-8") as f:
        json.dump({"tokens": pieces, "scores": scores, "types": types, "bos": sp.bos_id(), "eos": sp.eos_id(),
                   "unk": sp.unk_id()}, f, ensure_ascii=False, indent=0)
        f.write("\n")
    log(f"wrote {os.path.relpath(SPM_VOCAB, ROOT)} ({len(pieces)} pieces)")


def tokenizer_metadata(name):
    model, pre, space = TOKENIZERS[name]
    base = [m for m in gguf_metadata("llama") if not m[0].startswith("tokenizer.")]
    if model == "gpt2":
        tok = [m for m in gguf_metadata("llama") if m[0].startswith("tokenizer.")]
        return base + [(k, t, pre if k == "tokenizer.ggml.pre" else v) for k, t, v in tok
                       if k != "tokenizer.ggml.add_bos_token"]
    with open(SPM_VOCAB, encoding="utf-8") as f:
        v = json.load(f)
    return base + [
        ("tokenizer.ggml.model", "str", "llama"),
        ("tokenizer.ggml.tokens", "arr_str", v["tokens"]),
        ("tokenizer.ggml.scores", "arr_f32", v["scores"]),
        ("tokenizer.ggml.token_type", "arr_i32", v["types"]),
        ("tokenizer.ggml.bos_token_id", "u32", v["bos"]),
        ("tokenizer.ggml.eos_token_id", "u32", v["eos"]),
        ("tokenizer.ggml.unknown_token_id", "u32", v["unk"]),
        ("tokenizer.ggml.add_space_prefix", "bool", space),
    ]


def tokenizer_goldens():
    import llama_cpp
    with open(TOK_CORPUS, encoding="utf-8") as f:
        corpus = json.load(f)
    out = {}
    for name in TOKENIZERS:
        path = os.path.join(OUT, f"tok-{name}.gguf")
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        out[name] = {"sha256": H.sha256_file(path),
                     "ids": [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in corpus]}
        llm.close()
        log(f"llama.cpp tokenizer {name}: {sum(len(i) for i in out[name]['ids'])} ids")
    with open(TOK_GOLDEN, "w", encoding="utf-8") as f:
        json.dump(out, f)
        f.write("\n")
    log(f"wrote {os.path.relpath(TOK_GOLDEN, ROOT)}")


# ---------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------

def top(logits, k=8):
    import numpy as np
    idx = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), float(logits[i])] for i in idx]


# Logit ids compared in full: a spread across the vocabulary.
PROBE_IDS = list(range(0, VOCAB, 997)) + [EOS]


def transformers_goldens():
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    out = {"new_tokens": NEW_TOKENS, "probe_ids": PROBE_IDS, "models": {}}
    for name in FAMILIES:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(OUT, name), dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        runs = []
        for prompt in PROMPTS:
            ids = list(prompt)
            gaps, last = [], None
            with torch.no_grad():
                for step in range(NEW_TOKENS):
                    logits = model(torch.tensor([ids])).logits[0, -1].float().numpy()
                    if step == 0:
                        last = logits
                    s = np.sort(logits)
                    gaps.append(float(s[-1] - s[-2]))
                    ids.append(int(np.argmax(logits)))
            runs.append({"prompt": prompt, "greedy": ids[len(prompt):], "top1_gaps": gaps,
                         "probe_logits": [float(last[i]) for i in PROBE_IDS], "top": top(last)})
            log(f"transformers {name}: greedy {ids[len(prompt):]} min gap {min(gaps):.4f}")
        out["models"][name] = runs
    with open(TF_GOLDEN, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    log(f"wrote {os.path.relpath(TF_GOLDEN, ROOT)}")


def llamacpp_goldens():
    import numpy as np
    import llama_cpp
    import llama_cpp.llama_cpp as L
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from llamacpp_plain import disable_extra_bufts
    disable_extra_bufts()
    f32 = 0  # GGML_TYPE_F32: an f32 KV cache, as rill keeps
    out = {"new_tokens": NEW_TOKENS, "models": {}}
    files = [f"{n}-{qt}" for n in GGUF_FAMILIES for qt in GGUF_TYPES] + [f"{f}-{m}" for f, m in quantized_files()]
    for key in files:
        path = os.path.join(OUT, f"{key}.gguf")
        if not os.path.exists(path):
            sys.exit(f"error: {path} is missing: run this script with --quantize target/release/rill first")
        llm = llama_cpp.Llama(model_path=path, n_ctx=POSITIONS, n_batch=POSITIONS, n_threads=2,
                              n_threads_batch=2, logits_all=False, verbose=False, type_k=f32, type_v=f32,
                              flash_attn=False)

        def last():
            ptr = L.llama_get_logits_ith(llm.ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32, copy=True)

        runs = []
        for prompt in PROMPTS:
            llm.reset()
            ids = list(prompt)
            llm.eval(ids)
            rows, gaps = [], []
            for _ in range(NEW_TOKENS):
                logits = last()
                s = np.sort(logits)
                gaps.append(float(s[-1] - s[-2]))
                rows.append(top(logits, 4))
                nxt = int(np.argmax(logits))
                ids.append(nxt)
                llm.eval([nxt])
            runs.append({"prompt": prompt, "greedy": ids[len(prompt):], "top1_gaps": gaps, "top": rows})
            log(f"llama.cpp {key}: greedy {ids[len(prompt):]} min gap {min(gaps):.4f}")
        out["models"][key] = {"sha256": H.sha256_file(path), "runs": runs}
        llm.close()
    with open(LC_GOLDEN, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    log(f"wrote {os.path.relpath(LC_GOLDEN, ROOT)}")


# ---------------------------------------------------------------------------

def write_if_changed(path, write):
    tmp = path + ".new"
    write(tmp)
    if os.path.exists(path) and H.sha256_file(path) == H.sha256_file(tmp):
        os.remove(tmp)
    else:
        os.replace(tmp, path)
        log(f"wrote {os.path.relpath(path, ROOT)}")


def make_all():
    if not os.path.exists(os.path.join(TOKENIZER_DIR, "tokenizer.json")):
        subprocess.check_call([os.path.join(ROOT, "scripts", "fetch-models.sh"), "gpt2-tokenizer"])
    os.makedirs(OUT, exist_ok=True)
    for name in TOKENIZERS:
        meta = tokenizer_metadata(name)
        write_if_changed(os.path.join(OUT, f"tok-{name}.gguf"), lambda p, m=meta: write_gguf(p, m, [], "f32"))
    for name in FAMILIES:
        changed = H.publish(os.path.join(OUT, name), lambda d, n=name: write_hf(d, n))
        log(f"{name}: {'wrote' if changed else 'unchanged'} models/arch/{name}/")
    for name in GGUF_FAMILIES:
        meta, tensors = gguf_metadata(name), gguf_tensors(name)
        for qt in GGUF_TYPES:
            write_if_changed(os.path.join(OUT, f"{name}-{qt}.gguf"),
                             lambda p, q=qt: write_gguf(p, meta, tensors, q))


def bench_model():
    """models/arch/llama-bench-{f32,q4_k_m,q8_0}.gguf; the quantized ones by llama.cpp's own quantizer."""
    import llama_cpp
    FAMILIES.update(BENCH)
    f32 = os.path.join(OUT, "llama-bench-f32.gguf")
    if not os.path.exists(f32):
        log("writing models/arch/llama-bench-f32.gguf (~1.5 GB)")
        write_gguf(f32, gguf_metadata("llama-bench"), gguf_tensors("llama-bench"), "f32")
    for name, ftype in (("q4_k_m", 15), ("q8_0", 7)):  # LLAMA_FTYPE_MOSTLY_Q4_K_M, _Q8_0
        dest = os.path.join(OUT, f"llama-bench-{name}.gguf")
        if os.path.exists(dest):
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = 2
        rc = llama_cpp.llama_model_quantize(f32.encode(), dest.encode(), params)
        assert rc == 0, f"llama_model_quantize failed ({rc})"
        log(f"wrote models/arch/llama-bench-{name}.gguf with llama.cpp's quantizer")


def quantized_files():
    """(source family, mix) of every file `rill quantize` writes: each family's Q4_K_M, and every mix of
    llama-wide."""
    return [(f, "q4_k_m") for f in GGUF_FAMILIES if f != "llama-wide"] + [("llama-wide", m) for m in MIXES]


def quantize_all(rill):
    """The quantized files, written by `rill quantize` (deterministic)."""
    for family, mix in quantized_files():
        src = os.path.join(OUT, f"{family}-f32.gguf")
        dest = os.path.join(OUT, f"{family}-{mix}.gguf")
        if os.path.exists(dest) and os.path.getmtime(dest) >= max(os.path.getmtime(src), os.path.getmtime(rill)):
            continue
        subprocess.check_call([rill, "quantize", src, dest, "--type", mix], stdout=subprocess.DEVNULL)
        log(f"wrote models/arch/{family}-{mix}.gguf")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantize", metavar="RILL", help="also write llama-wide's quantized mixes with this rill binary")
    ap.add_argument("--goldens", action="store_true", help="write the transformers goldens")
    ap.add_argument("--llamacpp", action="store_true", help="write the llama.cpp goldens")
    ap.add_argument("--bench-model", action="store_true", help="write the ~375M-parameter llama-bench GGUF files")
    args = ap.parse_args()
    ensure_env("goldens" if args.goldens else "llamacpp" if args.llamacpp or args.bench_model else "lite")
    if args.goldens:
        train_spm_vocab()
    make_all()
    if args.quantize:
        quantize_all(os.path.abspath(args.quantize))
    if args.goldens:
        transformers_goldens()
    if args.llamacpp:
        llamacpp_goldens()
        tokenizer_goldens()
    if args.bench_model:
        bench_model()


if __name__ == "__main__":
    main()
