#!/usr/bin/env python3
"""Teacher-forced fidelity of rill against a reference implementation, measured through rill's own server.

    scripts/fidelity.py                                   # SmolLM2 Q4_1 GGUF against llama.cpp
    scripts/fidelity.py --gguf FILE.gguf                  # another GGUF against llama.cpp
    scripts/fidelity.py --hf models/tiny-gpt2             # a safetensors folder against transformers (f32)
    scripts/fidelity.py --url http://127.0.0.1:8080 ...   # a rill already running (started with a large
                                                          # --max-logprobs)

The corpus (tests/fixtures/fidelity-corpus.txt unless --corpus) is tokenized by rill (`POST /tokenize`) and cut
into windows of --ctx tokens. For each window, rill answers `POST /v1/completions` with `echo: true`,
`logprobs: TOP`, `return_tokens_as_token_ids: true`: the prompt logprobs the server itself serves. The
reference computes the logits of every position of the same ids (llama.cpp through `llama-cpp-python` with
`logits_all`, or HF `transformers`). Every position but a window's first is scored:

  * top-1 agreement: the reference's most likely next token is rill's most likely one;
  * KL(reference || rill), as llama.cpp's `perplexity --kl-divergence` reports it (mean, median, p99, max).
    rill's distribution is known on its TOP most likely tokens (default 8000), so the KL is taken over those
    tokens plus one bucket for the rest of the vocabulary (both sides' remaining mass): a lower bound of the
    full KL that the rest bucket makes tight once it holds little mass (its mean size is printed);
  * the mean absolute difference of the actual next token's logprob.

Needs the release binary (cargo build --release) unless --url is given. The reference runs in its own venv:
.venv-llamacpp (llama-cpp-python==0.3.36, built from source on first use: ~15-25 min on 2 cores) or
.venv-fixtures (torch + transformers, as scripts/make-fixtures.py --goldens makes it).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf")
DEFAULT_CORPUS = os.path.join(ROOT, "tests/fixtures/fidelity-corpus.txt")
VENVS = {
    "llamacpp": (os.path.join(ROOT, ".venv-llamacpp"), ["llama-cpp-python==0.3.36", "numpy"], "llama_cpp"),
    "transformers": (os.path.join(ROOT, ".venv-fixtures"), ["torch", "transformers", "numpy"], "transformers"),
}


def log(msg):
    print(f"[fidelity] {msg}", file=sys.stderr, flush=True)


def reexec_in_venv(kind):
    """Runs this script again inside the reference's venv, creating it when missing."""
    venv, packages, module = VENVS[kind]
    py = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    if not os.path.exists(py) or subprocess.call([py, "-c", f"import {module}, numpy"],
                                                 stderr=subprocess.DEVNULL) != 0:
        log(f"installing {' '.join(packages)} into {venv}")
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        env = dict(os.environ, CMAKE_ARGS=os.environ.get("CMAKE_ARGS", "-DGGML_NATIVE=ON"))
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", *packages], env=env)
    os.execv(py, [py, *sys.argv])


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def start_rill(model, top, threads):
    """`rill serve` on a free port of 127.0.0.1; returns (process, base URL)."""
    binary = os.path.join(ROOT, "target/release/rill")
    if not os.path.exists(binary):
        sys.exit("target/release/rill is missing: run cargo build --release")
    cmd = [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
           "--max-logprobs", str(top), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = None
    for line in proc.stderr:
        m = re.match(r"^rill listening on (http://\S+)$", line.strip())
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        sys.exit("rill serve exited before listening")
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except Exception:
            time.sleep(0.2)
    proc.kill()
    sys.exit("rill serve did not become ready")


def rill_window(url, ids, top):
    """rill's prompt logprobs for `ids`: per position, ({id: logprob} of its top tokens, actual token's logprob)."""
    body = {"prompt": ids, "echo": True, "logprobs": top, "max_tokens": 1, "temperature": 0,
            "return_tokens_as_token_ids": True}
    lp = post(url + "/v1/completions", body)["choices"][0]["logprobs"]
    n = len(ids)
    tops = [{int(k.split(":")[1]): v for k, v in (t or {}).items()} for t in lp["top_logprobs"][:n]]
    got = [int(t.split(":")[1]) for t in lp["tokens"][:n]]
    assert got == ids, "rill echoed other token ids than it was sent"
    return tops, lp["token_logprobs"][:n]


class LlamaCpp:
    def __init__(self, gguf, ctx, threads, kv):
        import llama_cpp
        import llamacpp_plain
        llamacpp_plain.disable_extra_bufts()
        ggml_type = {"f32": 0, "f16": 1}[kv]
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=ctx + 8, n_batch=ctx + 8, n_ubatch=ctx + 8,
                                   n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False,
                                   type_k=ggml_type, type_v=ggml_type)
        self.name = f"llama.cpp {kv} KV (llama-cpp-python {llama_cpp.__version__})"

    def logits(self, ids):
        import numpy as np
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float64)


class Transformers:
    def __init__(self, folder, threads):
        import torch
        import transformers
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.name = f"transformers {transformers.__version__} (f32)"

    def logits(self, ids):
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([ids])).logits[0]
        return out.double().numpy()


def log_softmax(rows):
    import numpy as np
    m = rows.max(axis=1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))


def score(ref_lp, tops, token_lps, ids):
    """Per scored position: (top-1 agrees, KL, rest-bucket mass, |Δ logprob of the actual token|)."""
    import numpy as np
    out = []
    for i in range(1, len(ids)):
        ref = ref_lp[i - 1]
        q = tops[i]
        ids_q = np.fromiter(q.keys(), dtype=np.int64)
        lq = np.fromiter(q.values(), dtype=np.float64)
        lp = ref[ids_q]
        p = np.exp(lp)
        kl = float(np.sum(p * (lp - lq)))
        p_rest = max(0.0, 1.0 - p.sum())
        q_rest = max(0.0, 1.0 - np.exp(lq).sum())
        if p_rest > 0:
            kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-30)))
        rill_top = min(q.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        agree = int(np.argmax(ref)) == rill_top
        out.append((agree, max(kl, 0.0), p_rest, abs(ref[ids[i]] - token_lps[i])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=DEFAULT_GGUF, help="GGUF file, compared against llama.cpp")
    ap.add_argument("--hf", help="HuggingFace folder (safetensors), compared against transformers instead")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    ap.add_argument("--url", help="a running rill (else one is started on the same model)")
    ap.add_argument("--ctx", type=int, default=256, help="tokens per window")
    ap.add_argument("--top", type=int, default=8000, help="rill alternatives per position")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-kv", choices=["f32", "f16"], default="f32",
                    help="llama.cpp's KV-cache type (rill's cache is f32; llama.cpp's own default is f16)")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args()
    kind = "transformers" if args.hf else "llamacpp"
    reexec_in_venv(kind)
    import numpy as np

    model = os.path.abspath(args.hf or args.gguf)
    proc = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        proc, url = start_rill(model, args.top, args.threads)
    try:
        text = open(args.corpus, encoding="utf-8").read()
        ids = post(url + "/tokenize", {"content": text})["tokens"]
        windows = [ids[i:i + args.ctx] for i in range(0, len(ids), args.ctx)]
        windows = [w for w in windows if len(w) > 1]
        log(f"{len(ids)} corpus tokens in {len(windows)} windows of at most {args.ctx}")
        ref = Transformers(model, args.threads) if args.hf else LlamaCpp(model, args.ctx, args.threads, args.llama_kv)
        rows = []
        for w in windows:
            tops, token_lps = rill_window(url, w, args.top)
            rows += score(log_softmax(ref.logits(w)), tops, token_lps, w)
    finally:
        if proc:
            proc.kill()
            proc.wait()
    agree = np.array([r[0] for r in rows])
    kl = np.array([r[1] for r in rows])
    rest = np.array([r[2] for r in rows])
    dlp = np.array([r[3] for r in rows])
    summary = {
        "model": os.path.relpath(model, ROOT),
        "reference": ref.name,
        "positions": len(rows),
        "top1_agreement": float(agree.mean()),
        "kl_mean": float(kl.mean()),
        "kl_median": float(np.median(kl)),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "rest_mass_mean": float(rest.mean()),
        "token_logprob_abs_diff_mean": float(dlp.mean()),
        "top": args.top,
        "ctx": args.ctx,
    }
    print(f"| model | reference | positions | top-1 agreement | mean KL | median KL | p99 KL | max KL |"
          f" mean abs Δ logprob |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {summary['model']} | {ref.name} | {len(rows)} | {100 * agree.mean():.2f}% | {kl.mean():.6f} |"
          f" {np.median(kl):.6f} | {np.percentile(kl, 99):.6f} | {kl.max():.6f} | {dlp.mean():.6f} |")
    log(f"mean probability mass outside rill's top {args.top}: {rest.mean():.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
