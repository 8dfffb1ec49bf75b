#!/usr/bin/env python3
"""Golden greedy outputs for SmolLM2-135M-Instruct (Q4_1 GGUF) from llama.cpp.

    scripts/fetch-models.sh smollm2
    python3 scripts/make-llamacpp-goldens.py            # writes tests/fixtures/smollm2-llamacpp-golden.json
    python3 scripts/make-llamacpp-goldens.py --no-bench # skip the speed measurement
    python3 scripts/make-llamacpp-goldens.py --add-top-logits  # only add `top_logits` to the existing file

llama.cpp comes from the Python package `llama-cpp-python`, installed into
`.venv-llamacpp/` (git-ignored) on first use. It builds llama.cpp from source:
~10-15 minutes on 2 cores. To build it yourself beforehand:

    python3 -m venv .venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv-llamacpp/bin/pip install llama-cpp-python==0.3.36 jinja2 numpy

(the pinned version is LLAMA_CPP_PYTHON below).

Greedy decoding is done token by token: `eval` the prompt, take the argmax of the last
logits row, `eval` that token, and so on. Nothing is special-cased, so EOS (<|im_end|>,
id 2) does not stop generation; `first_eos_index` says where it first appears.

llama.cpp's AMX matmul path (an "extra buffer type") crashes on some CPUs; the script
turns the extra buffer types off (`use_extra_bufts = False`) before loading the model.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import llamacpp_plain  # beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-llamacpp")
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
GGUF = os.path.join(ROOT, "models", "smollm2", "SmolLM2-135M-Instruct-Q4_1.gguf")
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2-llamacpp-golden.json")

N_THREADS = 2
N_CTX = 2048
SEED = 1234
N_GEN = 32
BENCH_TOKENS = 128
BENCH_ROUNDS = 5
EOS_ID = 2

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


GGML_TYPE_F32 = 0  # ggml's type id for f32 (KV cache type)


def chat(user, system=DEFAULT_SYSTEM):
    """The text SmolLM2's chat template renders for one user turn + generation prompt."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n")


# (name, kind, user message or raw text)
PROMPTS = [
    ("raw-capital", "raw", "The capital of France is"),
    ("raw-once", "raw", "Once upon a time"),
    ("chat-capital", "chat", "What is the capital of France?"),
    ("chat-capital-germany", "chat", "What is the capital of Germany?"),
    ("chat-math", "chat", "What is 2+2?"),
    ("chat-colors", "chat", "List three primary colors."),
    ("chat-cjk-emoji", "chat", "Translate to English: 東京は日本の首都です 🗼🚀"),
]
BENCH_PROMPT = "chat-capital"
# Leading steps whose top1-top2 logit gap is at least this are "stable": another correct
# implementation (different kernels, f32 vs quantized activations) should reproduce them.
# After a smaller gap, outputs may legitimately diverge.
STABLE_GAP = 0.5


def log(msg):
    print(f"[llamacpp-goldens] {msg}", flush=True)


def ensure_env():
    import importlib.util
    if all(importlib.util.find_spec(m) for m in ("llama_cpp", "jinja2", "numpy")):
        return
    if os.environ.get("RILL_LLAMACPP_REEXEC"):
        sys.exit(f"error: llama_cpp/jinja2/numpy still missing in {sys.executable}")
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        log("creating .venv-llamacpp")
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    if subprocess.call([py, "-c", "import llama_cpp, jinja2, numpy"], stderr=subprocess.DEVNULL) != 0:
        log(f"installing {LLAMA_CPP_PYTHON} (builds llama.cpp from source: ~10-15 min on 2 cores)")
        env = dict(os.environ)
        env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=ON")
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.check_call([py, "-m", "pip", "install", LLAMA_CPP_PYTHON, "jinja2", "numpy"], env=env)
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]],
              dict(os.environ, RILL_LLAMACPP_REEXEC="1"))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class Greedy:
    def __init__(self, llm):
        import numpy as np
        self.np, self.llm = np, llm

    def last_logits(self):
        return last_logits(self.llm)

    def run(self, prompt_ids, n):
        np, llm = self.np, self.llm
        llm.reset()
        llm.eval(prompt_ids)
        out, gaps, top2 = [], [], []
        for i in range(n):
            lg = self.last_logits()
            a, b = np.argsort(-lg, kind="stable")[:2]
            out.append(int(a))
            gaps.append(float(lg[a] - lg[b]))
            top2.append([int(a), int(b)])
            if i + 1 < n:
                llm.eval([int(a)])
        return out, gaps, top2


def last_logits(llm):
    """A copy of the logits of the last token `llm.eval` decoded (llama_get_logits_ith(ctx, -1)).

    Llama.eval with logits_all=False no longer copies logits into llm.scores, so read them
    from the context directly."""
    import numpy as np
    import llama_cpp.llama_cpp as L
    ptr = L.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32, copy=True)


def detok(llm, ids, special=True):
    return llm.detokenize(ids, special=special).decode("utf-8", errors="replace")


def render_template(llm, user):
    """Render the GGUF's tokenizer.chat_template the way transformers does (jinja2 sandbox)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    tmpl = llm.metadata.get("tokenizer.chat_template")
    if not tmpl:
        return None, None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(tmpl).render(
        messages=[{"role": "user", "content": user}],
        add_generation_prompt=True,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    return tmpl, text


def bench(llm, prompt_ids):
    """Prompt-eval ms and decode tok/s over a BENCH_TOKENS greedy generation, median of rounds."""
    import numpy as np
    import llama_cpp.llama_cpp as L
    rows = []
    for r in range(BENCH_ROUNDS + 1):  # round 0 is a warm-up and is not counted
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        t1 = time.perf_counter()
        tok = int(np.argmax(last_logits(llm)))
        L.llama_perf_context_reset(llm.ctx)
        t2 = time.perf_counter()
        for _ in range(BENCH_TOKENS):
            llm.eval([tok])
            tok = int(np.argmax(last_logits(llm)))
        t3 = time.perf_counter()
        perf = L.llama_perf_context(llm.ctx)
        row = {
            "prompt_eval_ms_wall": (t1 - t0) * 1e3,
            "decode_tok_s_wall": BENCH_TOKENS / (t3 - t2),
            "decode_tok_s_llama": perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms > 0 else None,
        }
        if r == 0:
            log(f"bench warm-up: decode {row['decode_tok_s_wall']:.1f} tok/s")
            continue
        rows.append(row)
        log(f"bench round {r}: prompt {rows[-1]['prompt_eval_ms_wall']:.1f} ms, "
            f"decode {rows[-1]['decode_tok_s_wall']:.1f} tok/s (wall), "
            f"{rows[-1]['decode_tok_s_llama'] or 0:.1f} tok/s (llama.cpp timings)")
    med = {k: round(statistics.median(r[k] for r in rows if r[k] is not None), 2) for k in rows[0]}
    return med, rows


TOP_LOGITS = 8


def open_model(**extra):
    """The GGUF in llama.cpp with the goldens' settings (`extra`: more `Llama` arguments, e.g. the KV type)."""
    import llama_cpp
    return llama_cpp.Llama(model_path=GGUF, n_ctx=N_CTX, n_batch=512, n_threads=N_THREADS,
                           n_threads_batch=N_THREADS, seed=SEED, logits_all=False, verbose=False, **extra)


def add_top_logits():
    """Adds `top_logits` to every prompt of the golden file: at each step of its recorded greedy path
    (teacher-forced, f16 KV cache as recorded), llama.cpp's TOP_LOGITS best ids with their logits, best
    first. Tests use them to tell a near-tie among several tokens from a real disagreement."""
    import numpy as np
    with open(OUT, encoding="utf-8") as f:
        golden = json.load(f)
    assert sha256_file(GGUF) == golden["model_sha256"], "the golden file was made from another GGUF"
    llamacpp_plain.disable_extra_bufts()
    llm = open_model()
    for e in golden["prompts"]:
        llm.reset()
        llm.eval(e["prompt_ids"])
        tops, path = [], e["generated_ids"]
        for i, want in enumerate(path):
            lg = last_logits(llm)
            order = np.argsort(-lg, kind="stable")[:TOP_LOGITS]
            tops.append([[int(t), round(float(lg[t]), 5)] for t in order])
            if int(order[0]) != want:
                log(f"{e['name']} step {i}: this llama.cpp build picks {int(order[0])}, the file {want} "
                    f"(gap {float(lg[order[0]] - lg[want]):.5f})")
            if i + 1 < len(path):
                llm.eval([want])
        e["top_logits"] = tops
        log(f"{e['name']}: {len(tops)} steps")
    golden["top_logits_note"] = (f"per prompt, `top_logits`: at each step of `generated_ids` (teacher-forced, "
                                 f"f16 KV cache), llama.cpp's {TOP_LOGITS} best [id, logit], best first")
    write_golden(golden)


def write_golden(golden):
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    log(f"wrote {os.path.relpath(OUT, ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-bench", action="store_true", help="skip the tok/s measurement")
    ap.add_argument("--add-top-logits", action="store_true",
                    help="keep the existing golden file and add each step's top logits along its paths")
    args = ap.parse_args()
    ensure_env()
    if args.add_top_logits:
        return add_top_logits()

    if not os.path.exists(GGUF):
        log("GGUF missing: running scripts/fetch-models.sh smollm2")
        subprocess.check_call(["bash", os.path.join(ROOT, "scripts", "fetch-models.sh"), "smollm2"])
    gguf_sha = sha256_file(GGUF)
    assert gguf_sha == GGUF_SHA256, f"unexpected GGUF sha256 {gguf_sha}"

    import llama_cpp
    llamacpp_plain.disable_extra_bufts()
    llm = open_model()
    md = llm.metadata
    add_bos = md.get("tokenizer.ggml.add_bos_token", "false") == "true"
    log(f"llama-cpp-python {llama_cpp.__version__}; add_bos_token={md.get('tokenizer.ggml.add_bos_token')} "
        f"pre={md.get('tokenizer.ggml.pre')} eos={md.get('tokenizer.ggml.eos_token_id')}")
    assert llm.token_eos() == EOS_ID, llm.token_eos()

    # The chat prompts as text, checked against the GGUF's own chat template.
    template, rendered = render_template(llm, PROMPTS[2][2])
    template_ok = rendered == chat(PROMPTS[2][2]) if rendered is not None else None
    if template_ok is False:
        sys.exit(f"chat template renders differently:\n{rendered!r}\nvs\n{chat(PROMPTS[2][2])!r}")
    log(f"chat template check: {'matches' if template_ok else 'no template in GGUF'}")

    greedy = Greedy(llm)
    entries, bench_ids = [], None
    for name, kind, text in PROMPTS:
        prompt = chat(text) if kind == "chat" else text
        if kind == "chat" and template is not None:
            assert render_template(llm, text)[1] == prompt, name
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        out, gaps, top2 = greedy.run(ids, N_GEN)
        first_eos = out.index(EOS_ID) if EOS_ID in out else None
        stable = next((i for i, g in enumerate(gaps) if g < STABLE_GAP), len(gaps))
        until_eos = out[:first_eos] if first_eos is not None else out
        e = {
            "name": name,
            "kind": kind,
            "user_message": text if kind == "chat" else None,
            "prompt": prompt,
            "prompt_ids": ids,
            "generated_ids": out,
            "first_eos_index": first_eos,
            "top1_top2_gaps": [round(g, 5) for g in gaps],
            "top2_ids": top2,
            "min_top1_top2_gap": round(min(gaps), 5),
            "stable_prefix_len": stable,
            "generated_text": detok(llm, out, special=True),
            "generated_text_until_eos": detok(llm, until_eos, special=False),
        }
        entries.append(e)
        if name == BENCH_PROMPT:
            bench_ids = ids
        log(f"{name}: {len(ids)} prompt tokens, eos at {first_eos}, min gap {min(gaps):.4f}, "
            f"stable prefix {stable}, "
            f"text {e['generated_text_until_eos']!r}")

    # llama.cpp keeps its KV cache in f16 by default; rill keeps it in f32. Greedy decoding of this model is
    # sensitive enough that llama.cpp itself, switched to an f32 cache, leaves its default path within a few
    # tokens on some prompts. So record the f32-cache run too: it is the like-for-like reference for rill.
    llm32 = open_model(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False)
    greedy32 = Greedy(llm32)
    for e in entries:
        out, gaps, top2 = greedy32.run(e["prompt_ids"], N_GEN)
        e["f32_kv"] = {"generated_ids": out, "top1_top2_gaps": [round(g, 5) for g in gaps], "top2_ids": top2}
        split = next((i for i, (a, b) in enumerate(zip(out, e["generated_ids"])) if a != b), None)
        log(f"{e['name']}: f32 KV cache run leaves the default (f16 KV) run at token {split}")
    del llm32

    im_start = llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    golden = {
        "description": "Greedy token-by-token outputs of llama.cpp (via llama-cpp-python) for "
                       "SmolLM2-135M-Instruct Q4_1; EOS does not stop generation. Made by "
                       "scripts/make-llamacpp-goldens.py.",
        "model": "models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf",
        "model_sha256": gguf_sha,
        "llama_cpp_python": llama_cpp.__version__,
        "settings": {"n_threads": N_THREADS, "n_ctx": N_CTX, "n_batch": 512, "seed": SEED,
                     "sampling": "argmax over the last logits row (temperature 0 / top_k 1)",
                     "n_generated": N_GEN, "use_extra_bufts": False,
                     "kv_cache": "f16 (llama.cpp's default) for the top-level results; f32 under each "
                                 "prompt's `f32_kv`", "flash_attn": False},
        "stable_gap_threshold": STABLE_GAP,
        "stable_prefix_len_note": "per prompt: number of leading generated tokens whose top1-top2 logit "
                                  "gap is >= stable_gap_threshold; compare other implementations on "
                                  "these, later tokens may follow a near-tie differently",
        "tokenizer": {
            "add_bos_token": add_bos,
            "bos_id": llm.token_bos(),
            "eos_id": llm.token_eos(),
            "pre": md.get("tokenizer.ggml.pre"),
            "im_start_ids": im_start,
            "tokenize_flags": {"add_bos": add_bos, "special": True},
        },
        "chat_template": {
            "default_system": DEFAULT_SYSTEM,
            "gguf_template_matches": template_ok,
            "gguf_template": template,
        },
        "prompts": entries,
    }
    if not args.no_bench:
        med, rows = bench(llm, bench_ids)
        golden["speed_info"] = {
            "note": "informational only (not for tests): shared 2-core machine; greedy decode of "
                    f"{BENCH_TOKENS} tokens after the '{BENCH_PROMPT}' prompt, median of {BENCH_ROUNDS} "
                    "after a warm-up; prompt_eval_ms_wall is the whole prompt in one eval",
            "prompt": BENCH_PROMPT,
            "prompt_tokens": len(bench_ids),
            "n_threads": N_THREADS,
            "median": med,
            "rounds": [{k: round(v, 2) if v is not None else None for k, v in r.items()} for r in rows],
        }
    elif os.path.exists(OUT):
        # --no-bench: keep the speed numbers of the previous run, if any.
        with open(OUT, encoding="utf-8") as f:
            prev = json.load(f).get("speed_info")
        if prev is not None:
            golden["speed_info"] = prev
    write_golden(golden)
    # The tests read each step's top logits too.
    add_top_logits()


if __name__ == "__main__":
    main()
