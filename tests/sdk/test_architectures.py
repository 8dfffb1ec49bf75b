"""Every decoder family, from a HuggingFace folder and from GGUF files, served by `rill serve` and used through
the official OpenAI SDK: a chat completion, streamed and not, gives the same greedy text.

Each case starts its own server (127.0.0.1, a free port) on a tiny fixture from scripts/make-arch-fixtures.py and
stops it by PID. The fixtures are random-weight models, so the text is gibberish: what is checked is that the
server loads the model, applies its chat template, generates, and speaks the wire format.
"""

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import ROOT, TIMEOUT

RILL = Path(os.environ.get("RILL_BIN", ROOT / "target" / "release" / "rill"))
ARCH = ROOT / "models" / "arch"
CASES = [f"{f}" for f in ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3")] + [
    f"{f}-{q}.gguf" for f in ("llama", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3") for q in ("q8_0", "q4_k_m")
] + ["llama-wide-q6_k.gguf", "llama-wide-q4_k_m.gguf --kv-dtype f16",
      # LongRoPE: the fixture's pretrained context (16) is too short for a chat; --ctx-size takes its long factors.
      "phi3-long --ctx-size 256", "phi3-long-q4_k_m.gguf --ctx-size 256"]


class Server:
    def __init__(self, model: Path, extra=()):
        assert model.exists(), f"{model} is missing: run scripts/make-arch-fixtures.py"
        self.log = open(f"/tmp/rill-arch-{os.getpid()}-{model.name}.log", "w+")
        self.proc = subprocess.Popen(
            [str(RILL), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0", "--threads", "1",
             *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, RILL_LOG="info"))
        deadline = time.monotonic() + 60
        self.url = None
        while time.monotonic() < deadline and self.url is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rill serve exited: {self.text()}")
            m = re.search(r"rill listening on (http://\S+)", self.text())
            self.url = m.group(1) if m else None
            time.sleep(0.1)
        # The server listens before the model is loaded (503 until then): wait for /health to answer 200.
        while self.url is not None and time.monotonic() < deadline and not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rill serve exited: {self.text()}")
            time.sleep(0.1)
        if self.url is None or not self.healthy():
            self.stop()
            raise RuntimeError(f"rill serve did not become ready: {self.text()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()
        os.unlink(self.log.name)


@pytest.mark.parametrize("case", CASES)
def test_openai_chat_on_every_architecture(case):
    name, *extra = case.split()
    server = Server(ARCH / name, extra)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        models = [m.id for m in client.models.list()]
        assert len(models) == 1
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
        full = client.chat.completions.create(model=models[0], messages=messages, max_tokens=12, temperature=0)
        choice = full.choices[0]
        assert choice.message.role == "assistant"
        assert full.usage.completion_tokens == 12 or choice.finish_reason == "stop"
        assert full.usage.prompt_tokens > 10  # the template wrapped the two messages
        stream = client.chat.completions.create(model=models[0], messages=messages, max_tokens=12, temperature=0,
                                                stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == choice.message.content
    finally:
        server.stop()
