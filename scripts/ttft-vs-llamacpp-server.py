"""Time to first token over HTTP: `rill serve` against llama-cpp-python's own OpenAI-compatible server.

Both serve the same SmolLM2 Q4_1 GGUF on 127.0.0.1 with the same thread count; the same streaming
/v1/chat/completions request (a short chat prompt, greedy) goes to each in turn, ROUNDS times, and the time
until the first non-empty content delta is recorded. Two modes: the same prompt every round (llama-cpp-python
then reuses the KV cache of its previous request: a prefix cache rill does not have) and a distinct user
message every round (only the shared system prompt can be reused). Prints medians. Needs .venv-llamacpp with the server extras
(`pip install fastapi uvicorn sse-starlette pydantic-settings starlette-context`); run it with that venv's python:

    .venv-llamacpp/bin/python scripts/ttft-vs-llamacpp-server.py [ROUNDS]
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

GGUF = "models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"
THREADS = os.environ.get("THREADS", "2")
LLAMA_LAUNCHER = """
import sys
import llama_cpp.llama_cpp as L
orig = L.llama_model_default_params
def params():  # llama.cpp's AMX buffer path crashes on some of these machines: keep plain CPU buffers.
    p = orig(); p.use_extra_bufts = False; return p
L.llama_model_default_params = params
import llama_cpp.server.__main__ as m
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
m.main()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"server at {url} did not become ready")


def ttft(base, model, question="What is the capital of Germany?"):
    body = json.dumps({"model": model, "stream": True, "temperature": 0, "max_tokens": 16,
                       "messages": [{"role": "user", "content": question}]}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"] if json.loads(line[6:]).get("choices") else {}
            if first is None and delta.get("content"):
                first = time.perf_counter() - t0
    return first * 1e3


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    p_rill, p_llama = free_port(), free_port()
    rill = subprocess.Popen(["target/release/rill", "serve", "--model", "smollm2", "--port", str(p_rill),
                             "--threads", THREADS], stderr=subprocess.DEVNULL)
    llama = subprocess.Popen([sys.executable, "-c", LLAMA_LAUNCHER, "--model", GGUF, "--host", "127.0.0.1",
                              "--port", str(p_llama), "--n_threads", THREADS, "--n_threads_batch", THREADS,
                              "--n_ctx", "2048", "--model_alias", "smollm2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{p_rill}/health")
        wait_ready(f"http://127.0.0.1:{p_llama}/v1/models")
        ttft(f"http://127.0.0.1:{p_rill}", "smollm2"), ttft(f"http://127.0.0.1:{p_llama}", "smollm2")  # warm-up
        urls = (f"http://127.0.0.1:{p_rill}", f"http://127.0.0.1:{p_llama}")
        for mode in ("same prompt", "distinct prompts"):
            a, b = [], []
            for i in range(rounds):
                q = "What is the capital of Germany?" if mode == "same prompt" else f"Name a river in country number {i + 1}."
                a.append(ttft(urls[0], "smollm2", q))
                b.append(ttft(urls[1], "smollm2", q))
                print(f"{mode}, round {i + 1}: rill {a[-1]:.1f} ms, llama-cpp-python server {b[-1]:.1f} ms")
            print(f"TTFT median of {rounds}, {mode}: rill {statistics.median(a):.1f} ms, "
                  f"llama-cpp-python server {statistics.median(b):.1f} ms ({THREADS} threads each)\n")
    finally:
        rill.terminate()
        llama.terminate()
        rill.wait()
        llama.wait()


if __name__ == "__main__":
    main()
