#!/usr/bin/env python3
"""Make rill's small GPT-2 test checkpoints (and, on request, their goldens).

    python3 scripts/make-fixtures.py               # default: checkpoints under models/
    python3 scripts/make-fixtures.py --check       # + greedy run with a numpy GPT-2, prints logit gaps
    python3 scripts/make-fixtures.py --bench-model # + models/gpt2-124m-shape/ (~500 MB)
    python3 scripts/make-fixtures.py --goldens     # + tests/fixtures/gpt2-golden.json via transformers

Default mode (what CI runs) needs only the standard library and numpy. When the
running interpreter has no numpy, the script creates `.venv-fixtures-lite/`
(git-ignored) with `pip install numpy` once and re-runs itself inside it.
`--goldens` does the same with `.venv-fixtures/` holding `torch` + `transformers`
(the default `torch` wheel is the CUDA build: a few GB and ~2 minutes to install;
it runs on the CPU). The goldens are committed, so CI never needs that venv.

Needs models/gpt2-tokenizer/ (scripts/fetch-models.sh gpt2-tokenizer); the
script runs that step itself when the folder is missing.

Weights are a pure function of (tensor name, element index), independent of any
library's RNG, so every run on every machine writes byte-identical files:

    seed(name) = FNV-1a 64-bit hash of the canonical tensor name
                 (the Hub naming without "transformer.", e.g. "h.0.attn.c_attn.weight")
    z          = splitmix64(index + seed * 0x9E3779B97F4A7C15)    (all mod 2**64;
                 index = row-major element index in the tensor's shape)
    u          = ((z >> 40) - 2**23) / 2**23                       (exact, in [-1, 1))
    value      = f32(center + scale * u)                           (computed in f64)

with (center, scale) per tensor kind from `tensor_specs()`. splitmix64(x):
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31

Outputs (all git-ignored except the golden JSON):
    models/tiny-gpt2/                 save_pretrained layout (transformer.* keys, tied lm_head)
    models/tiny-gpt2-hub-layout/      the Hub `gpt2` naming + h.N.attn.bias buffers, 2 shards + index
    models/hf-cache/models--rill-fixtures--tiny-gpt2/   hf-hub cache layout of tiny-gpt2
    models/gpt2-124m-shape/           (--bench-model) 124M-parameter GPT-2 shape, same formula
    tests/fixtures/gpt2-golden.json   (--goldens) transformers greedy outputs + logits
"""

import argparse
import filecmp
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
TOKENIZER_DIR = os.path.join(MODELS, "gpt2-tokenizer")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LITE_VENV = os.path.join(ROOT, ".venv-fixtures-lite")
GOLDEN_VENV = os.path.join(ROOT, ".venv-fixtures")
GOLDEN_PATH = os.path.join(ROOT, "tests", "fixtures", "gpt2-golden.json")

HF_CACHE_REPO = "rill-fixtures/tiny-gpt2"
# A fixed, fake commit hash for the hf-hub cache layout: sha1("rill-fixtures/tiny-gpt2@main").
HF_CACHE_COMMIT = hashlib.sha1(b"rill-fixtures/tiny-gpt2@main").hexdigest()

TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)
BENCH = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024)
VOCAB = 50257
EOS = 50256

GOLDEN_NEW_TOKENS = 24
# Prompts for the goldens with their GPT-2 ids (checked against the tokenizer in
# --goldens mode; used as-is by --check, which has no tokenizer).
PROMPTS = [
    ("Hello, world!", [15496, 11, 995, 0]),
    (
        "The quick brown fox jumps over the lazy dog because it wanted to see what was on the other side.",
        [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 780, 340, 2227, 284, 766, 644, 373, 319,
         262, 584, 1735, 13],
    ),
    ("Café 東京 🚀", [34, 1878, 2634, 10545, 251, 109, 12859, 105, 12520, 248, 222]),
    ("In 1969, astronauts first walked on the Moon.", [818, 16450, 11, 26835, 717, 6807, 319, 262, 6869, 13]),
]
LOGITS_FOR_FIRST = 2  # full last-position logits are stored for the first N prompts


# ---------------------------------------------------------------------------
# Bootstrapping: make sure we run in an interpreter that has what the mode needs.
# ---------------------------------------------------------------------------

def _have(*mods):
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in mods)


def _venv_python(venv):
    return os.path.join(venv, "bin", "python")


def ensure_env(args):
    if args.goldens:
        venv, mods, pkgs = GOLDEN_VENV, ("numpy", "torch", "transformers"), ["numpy", "torch", "transformers"]
    else:
        venv, mods, pkgs = LITE_VENV, ("numpy",), ["numpy"]
    if _have(*mods):
        return
    if os.environ.get("RILL_FIXTURES_REEXEC"):
        sys.exit(f"error: still missing {mods} inside {sys.executable}")
    py = _venv_python(venv)
    if not os.path.exists(py):
        print(f"[make-fixtures] creating {os.path.relpath(venv, ROOT)} ({' '.join(pkgs)})", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    ok = subprocess.call([py, "-c", "import " + ", ".join(mods)], stderr=subprocess.DEVNULL) == 0
    if not ok:
        print(f"[make-fixtures] installing {' '.join(pkgs)} into {os.path.relpath(venv, ROOT)}", flush=True)
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", *pkgs])
    env = dict(os.environ, RILL_FIXTURES_REEXEC="1")
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


def log(msg):
    print(f"[make-fixtures] {msg}", flush=True)


# ---------------------------------------------------------------------------
# Deterministic weights
# ---------------------------------------------------------------------------

def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def hashed_uniform(name, count, start=0):
    """u in [-1, 1) for elements start..start+count of tensor `name` (float64)."""
    import numpy as np
    seed = np.uint64((fnv1a64(name) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = np.arange(start, start + count, dtype=np.uint64) + seed
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(40)).astype(np.float64) - 8388608.0) / 8388608.0


def make_tensor(name, shape, center, scale):
    import numpy as np
    n = 1
    for d in shape:
        n *= d
    out = np.empty(n, dtype=np.float32)
    chunk = 1 << 22
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        out[s:s + c] = (center + scale * hashed_uniform(name, c, s)).astype(np.float32)
    return out.reshape(shape)


def tensor_specs(cfg):
    """[(canonical name, shape, center, scale)] in the Hub's `gpt2` naming.

    Scales: uniform[-a, a] has std a/sqrt(3); linear layers use a = gain*sqrt(3/fan_in) so a
    unit-variance input gives an output of std `gain`. The token embedding is small next to the
    position embedding and the block outputs, so with tied embeddings the last token does not
    simply predict itself; ln_f's gain spreads the logits (std ~10 on the tiny model).
    """
    E, L, P = cfg["n_embd"], cfg["n_layer"], cfg["n_positions"]
    r3 = 3.0 ** 0.5

    def lin(fan_in, gain):
        return gain * r3 / fan_in ** 0.5

    specs = [
        ("wte.weight", [VOCAB, E], 0.0, 0.5),
        ("wpe.weight", [P, E], 0.0, 1.5),
    ]
    for i in range(L):
        p = f"h.{i}."
        specs += [
            (p + "ln_1.weight", [E], 1.0, 0.2),
            (p + "ln_1.bias", [E], 0.0, 0.1),
            (p + "attn.c_attn.weight", [E, 3 * E], 0.0, lin(E, 2.0)),
            (p + "attn.c_attn.bias", [3 * E], 0.0, 0.1),
            (p + "attn.c_proj.weight", [E, E], 0.0, lin(E, 1.5)),
            (p + "attn.c_proj.bias", [E], 0.0, 0.1),
            (p + "ln_2.weight", [E], 1.0, 0.2),
            (p + "ln_2.bias", [E], 0.0, 0.1),
            (p + "mlp.c_fc.weight", [E, 4 * E], 0.0, lin(E, 1.5)),
            (p + "mlp.c_fc.bias", [4 * E], 0.0, 0.2),
            (p + "mlp.c_proj.weight", [4 * E, E], 0.0, lin(4 * E, 1.5)),
            (p + "mlp.c_proj.bias", [E], 0.0, 0.1),
        ]
    specs += [
        ("ln_f.weight", [E], 5.0, 1.0),
        ("ln_f.bias", [E], 0.0, 0.2),
    ]
    return specs


def make_weights(cfg):
    return {name: make_tensor(name, shape, c, s) for name, shape, c, s in tensor_specs(cfg)}


def causal_mask(P):
    import numpy as np
    return np.tril(np.ones((P, P), dtype=np.float32)).reshape(1, 1, P, P)


# ---------------------------------------------------------------------------
# safetensors writer (8-byte LE header length, JSON header, raw LE data)
# ---------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata=None):
    import numpy as np
    names = sorted(tensors)
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for n in names:
        t = tensors[n]
        assert t.dtype == np.float32
        nbytes = t.size * 4
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)  # pad so the data starts 8-byte aligned
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for n in names:
            f.write(np.ascontiguousarray(tensors[n], dtype="<f4").tobytes())
    os.replace(tmp, path)
    return offset


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------

def config_json(cfg):
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": VOCAB,
        "n_positions": cfg["n_positions"],
        "n_ctx": cfg["n_positions"],
        "n_embd": cfg["n_embd"],
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "tie_word_embeddings": True,
    }


def write_common(folder, cfg):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_json(cfg), f, indent=2)
        f.write("\n")
    for fn in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(TOKENIZER_DIR, fn), os.path.join(folder, fn))


def _tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = p
    return out


def same_tree(a, b):
    """True when folders a and b hold the same names, bytes and symlink targets."""
    ta, tb = _tree(a), _tree(b)
    if ta.keys() != tb.keys():
        return False
    for rel, pa in ta.items():
        pb = tb[rel]
        if os.path.islink(pa) or os.path.islink(pb):
            if not (os.path.islink(pa) and os.path.islink(pb) and os.readlink(pa) == os.readlink(pb)):
                return False
        elif os.path.isdir(pa) != os.path.isdir(pb):
            return False
        elif os.path.isfile(pa) and not filecmp.cmp(pa, pb, shallow=False):
            return False
    return True


def publish(dest, build):
    """Run build(tmp) in a fresh folder next to dest; replace dest only if the result differs.

    Re-running the script therefore leaves unchanged fixtures untouched (mtimes included),
    and readers never see a half-written folder. Returns True when dest was (re)written."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest) + ".", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        build(tmp)
        if os.path.isdir(dest) and not os.path.islink(dest) and same_tree(tmp, dest):
            shutil.rmtree(tmp)
            return False
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        return True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_pretrained_layout(folder, cfg, weights):
    """save_pretrained layout: transformer.* keys, no lm_head (tied)."""
    write_common(folder, cfg)
    path = os.path.join(folder, "model.safetensors")
    write_safetensors(path, {"transformer." + k: v for k, v in weights.items()}, {"format": "pt"})


def write_hub_layout(folder, cfg, weights):
    """The Hub `gpt2` naming (no prefix, h.N.attn.bias buffers) in two shards + index."""
    write_common(folder, cfg)
    mask = causal_mask(cfg["n_positions"])
    tensors = dict(weights)
    for i in range(cfg["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = mask
    shard1 = {k: v for k, v in tensors.items() if k in ("wte.weight", "wpe.weight")}
    shard2 = {k: v for k, v in tensors.items() if k not in shard1}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    total = 0
    weight_map = {}
    for fn, shard in zip(names, (shard1, shard2)):
        total += write_safetensors(os.path.join(folder, fn), shard, {"format": "pt"})
        for k in shard:
            weight_map[k] = fn
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


def hf_cache_repo_dir(cache_root):
    return os.path.join(cache_root, "models--" + HF_CACHE_REPO.replace("/", "--"))


def write_hf_cache(repo_dir, src_folder):
    """hf-hub cache layout: blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>."""
    blobs = os.path.join(repo_dir, "blobs")
    snap = os.path.join(repo_dir, "snapshots", HF_CACHE_COMMIT)
    os.makedirs(blobs)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo_dir, "refs"))
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(HF_CACHE_COMMIT)  # no trailing newline, like the real cache
    for fn in ("config.json", "model.safetensors") + TOKENIZER_FILES:
        src = os.path.join(src_folder, fn)
        digest = sha256_file(src)
        shutil.copyfile(src, os.path.join(blobs, digest))
        os.symlink(os.path.join("..", "..", "blobs", digest), os.path.join(snap, fn))


# ---------------------------------------------------------------------------
# numpy reference forward (same math as transformers' GPT2LMHeadModel, float32)
# ---------------------------------------------------------------------------

class NumpyGPT2:
    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w

    @staticmethod
    def _ln(x, g, b, eps=1e-5):
        import numpy as np
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * g + b

    @staticmethod
    def _gelu_new(x):
        import numpy as np
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))

    def logits(self, ids):
        """Logits for every position of `ids` (float32, [T, V])."""
        import numpy as np
        w, E, H = self.w, self.cfg["n_embd"], self.cfg["n_head"]
        T, D = len(ids), E // H
        x = w["wte.weight"][ids] + w["wpe.weight"][:T]
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
        for i in range(self.cfg["n_layer"]):
            p = f"h.{i}."
            a = self._ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
            qkv = a @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (qkv[:, j * E:(j + 1) * E].reshape(T, H, D).transpose(1, 0, 2) for j in range(3))
            s = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(D)) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = (s @ v).transpose(1, 0, 2).reshape(T, E)
            x = x + o @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            m = self._ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            m = self._gelu_new(m @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = self._ln(x, w["ln_f.weight"], w["ln_f.bias"])
        return (x @ w["wte.weight"].T).astype(np.float32)

    def greedy(self, ids, n):
        import numpy as np
        ids, out, gaps = list(ids), [], []
        for _ in range(n):
            lg = self.logits(ids)[-1]
            top = np.argsort(-lg, kind="stable")[:2]
            gaps.append(float(lg[top[0]] - lg[top[1]]))
            out.append(int(top[0]))
            ids.append(int(top[0]))
        return out, gaps


def check(cfg, weights):
    model = NumpyGPT2(cfg, weights)
    worst = float("inf")
    for text, ids in PROMPTS:
        out, gaps = model.greedy(ids, GOLDEN_NEW_TOKENS)
        lg = model.logits(ids)[-1]
        worst = min(worst, min(gaps))
        log(f"check {text!r}: logits std {lg.std():.2f}, min gap {min(gaps):.4f}, "
            f"{len(set(out))} distinct of {len(out)}: {out}")
    log(f"check: min top1-top2 gap over all prompts {worst:.4f}")
    return worst


# ---------------------------------------------------------------------------
# Goldens (transformers)
# ---------------------------------------------------------------------------

def goldens(cfg, weights):
    import numpy as np
    import torch
    import transformers
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tiny = os.path.join(MODELS, "tiny-gpt2")
    hub = os.path.join(MODELS, "tiny-gpt2-hub-layout")
    # The tokenizer from the folder with vocab.json + merges.txt + tokenizer.json.
    tok = GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)
    assert len(tok) == VOCAB, len(tok)
    assert tok("Hello, world!")["input_ids"] == [15496, 11, 995, 0]

    models = {}
    for name, path in (("tiny-gpt2", tiny), ("tiny-gpt2-hub-layout", hub)):
        m = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32)
        m.eval()
        models[name] = m
    a, b = models["tiny-gpt2"], models["tiny-gpt2-hub-layout"]
    # The loaded weights must be the generated ones.
    sd = a.state_dict()
    for k, v in weights.items():
        assert np.array_equal(sd["transformer." + k].numpy(), v), k
    assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]), "lm_head not tied"

    ref = NumpyGPT2(cfg, weights)
    prompts_out, worst = [], float("inf")
    for i, (text, want_ids) in enumerate(PROMPTS):
        ids = tok(text)["input_ids"]
        assert ids == want_ids, (text, ids, want_ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            la = a(x).logits[0, -1]
            lb = b(x).logits[0, -1]
        assert torch.equal(la, lb), f"layouts disagree on {text!r}"
        np_diff = float(np.abs(ref.logits(ids)[-1] - la.numpy()).max())
        assert np_diff < 1e-3, f"numpy reference differs by {np_diff}"

        with torch.no_grad():
            # eos_token_id=None: <|endoftext|> (50256) does not stop generation; with
            # min_new_tokens == max_new_tokens nothing is suppressed either.
            gen = a.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=GOLDEN_NEW_TOKENS,
                min_new_tokens=GOLDEN_NEW_TOKENS,
                do_sample=False,
                num_beams=1,
                eos_token_id=None,
                pad_token_id=EOS,
                output_scores=True,
                output_logits=True,
                return_dict_in_generate=True,
            )
            gen_b = b.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=GOLDEN_NEW_TOKENS,
                min_new_tokens=GOLDEN_NEW_TOKENS, do_sample=False, num_beams=1,
                eos_token_id=None, pad_token_id=EOS,
            )
        new_ids = gen.sequences[0, len(ids):].tolist()
        assert new_ids == gen_b[0, len(ids):].tolist(), "layouts generate differently"
        assert len(new_ids) == GOLDEN_NEW_TOKENS
        gaps = []
        for step in gen.logits:
            t2 = torch.topk(step[0], 2).values
            gaps.append(float(t2[0] - t2[1]))
        # Recompute the whole sequence without the KV cache as a cross-check.
        with torch.no_grad():
            full = a(gen.sequences).logits[0]
        for j, t in enumerate(new_ids):
            assert int(full[len(ids) - 1 + j].argmax()) == t, "cached and uncached greedy differ"
        np_out, _ = ref.greedy(ids, GOLDEN_NEW_TOKENS)
        assert np_out == new_ids, f"numpy reference generates differently: {np_out} vs {new_ids}"
        assert len(set(new_ids)) > 1, f"degenerate generation for {text!r}: {new_ids}"
        worst = min(worst, min(gaps))
        entry = {
            "prompt": text,
            "prompt_ids": ids,
            "generated_ids": new_ids,
            "generated_text": tok.decode(new_ids, skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False),
            "min_top1_top2_gap": round(min(gaps), 6),
            "top1_top2_gaps": [round(g, 6) for g in gaps],
        }
        if i < LOGITS_FOR_FIRST:
            entry["last_logits"] = [round(float(v), 6) for v in la.tolist()]
            top = torch.topk(la, 5)
            entry["last_logits_top5"] = {"ids": top.indices.tolist(),
                                         "values": [round(float(v), 6) for v in top.values]}
        prompts_out.append(entry)
        log(f"golden {text!r}: {new_ids} min gap {min(gaps):.4f} text {entry['generated_text']!r}")

    golden = {
        "description": "Greedy outputs of HuggingFace transformers' GPT2LMHeadModel (float32, CPU) on "
                       "models/tiny-gpt2, made by scripts/make-fixtures.py --goldens.",
        "model_dir": "models/tiny-gpt2",
        "model_safetensors_sha256": sha256_file(os.path.join(tiny, "model.safetensors")),
        "hub_layout_shards_sha256": {
            fn: sha256_file(os.path.join(hub, fn))
            for fn in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
        },
        "config": config_json(cfg),
        "generation": {
            "max_new_tokens": GOLDEN_NEW_TOKENS,
            "do_sample": False,
            "eos_token_id": None,
            "note": "generate(eos_token_id=None): <|endoftext|> would not stop generation",
        },
        "logits_round_decimals": 6,
        "min_top1_top2_gap": round(worst, 6),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
        "prompts": prompts_out,
    }
    os.makedirs(os.path.dirname(GOLDEN_PATH), exist_ok=True)
    with open(GOLDEN_PATH, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    log(f"wrote {os.path.relpath(GOLDEN_PATH, ROOT)} (min top1-top2 gap {worst:.4f})")


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--goldens", action="store_true",
                    help="also write tests/fixtures/gpt2-golden.json with transformers (.venv-fixtures)")
    ap.add_argument("--check", action="store_true",
                    help="run greedy generation with the numpy reference and print logit gaps")
    ap.add_argument("--bench-model", action="store_true",
                    help="also write models/gpt2-124m-shape/ (~500 MB)")
    args = ap.parse_args()
    ensure_env(args)

    if not all(os.path.exists(os.path.join(TOKENIZER_DIR, f)) for f in TOKENIZER_FILES):
        log("models/gpt2-tokenizer missing: running scripts/fetch-models.sh gpt2-tokenizer")
        subprocess.check_call(["bash", os.path.join(ROOT, "scripts", "fetch-models.sh"), "gpt2-tokenizer"])

    def done(changed):
        return "wrote" if changed else "unchanged"

    weights = make_weights(TINY)
    tiny = os.path.join(MODELS, "tiny-gpt2")
    changed = publish(tiny, lambda d: write_pretrained_layout(d, TINY, weights))
    st = os.path.join(tiny, "model.safetensors")
    log(f"{done(changed)} models/tiny-gpt2 (model.safetensors sha256 {sha256_file(st)})")
    changed = publish(os.path.join(MODELS, "tiny-gpt2-hub-layout"), lambda d: write_hub_layout(d, TINY, weights))
    log(f"{done(changed)} models/tiny-gpt2-hub-layout (2 shards + index)")
    repo_dir = hf_cache_repo_dir(os.path.join(MODELS, "hf-cache"))
    changed = publish(repo_dir, lambda d: write_hf_cache(d, tiny))
    log(f"{done(changed)} {os.path.relpath(repo_dir, ROOT)} (HF_HUB_CACHE=models/hf-cache, "
        f"repo {HF_CACHE_REPO}, commit {HF_CACHE_COMMIT})")

    if os.path.exists(GOLDEN_PATH) and not args.goldens:
        with open(GOLDEN_PATH, encoding="utf-8") as f:
            want = json.load(f)["model_safetensors_sha256"]
        if want != sha256_file(st):
            log(f"WARNING: models/tiny-gpt2 differs from {os.path.relpath(GOLDEN_PATH, ROOT)}: "
                "rerun with --goldens")

    if args.check:
        check(TINY, weights)
    if args.goldens:
        goldens(TINY, weights)
    if args.bench_model:
        del weights
        folder = os.path.join(MODELS, "gpt2-124m-shape")
        changed = publish(folder, lambda d: write_pretrained_layout(d, BENCH, make_weights(BENCH)))
        path = os.path.join(folder, "model.safetensors")
        log(f"{done(changed)} models/gpt2-124m-shape ({os.path.getsize(path) / 1e6:.0f} MB, "
            f"sha256 {sha256_file(path)})")


if __name__ == "__main__":
    main()
