"""`curl -N` against rill: each dialect's raw stream, line by line, and an error's status and body."""

import json
import subprocess

from conftest import MAX_TOKENS


def curl(*args, timeout=60):
    out = subprocess.run(["curl", "-sSN", "--max-time", str(timeout), *args], capture_output=True, text=True, timeout=timeout + 5)
    assert out.returncode == 0, out.stderr
    return out.stdout


def post(url, body, *headers):
    extra = [x for h in headers for x in ("-H", h)]
    return curl(url, "-H", "Content-Type: application/json", *extra, "-d", json.dumps(body))


def test_openai_sse(base, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS, "stream": True}
    out = post(f"{base}/v1/chat/completions", body)
    blocks = [b for b in out.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks), out
    assert blocks[-1] == "data: [DONE]"
    chunks = [json.loads(b[6:]) for b in blocks[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_ollama_ndjson(base, model):
    out = post(f"{base}/api/chat", {"model": model, "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": MAX_TOKENS}})
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["done"] for line in lines].count(True) == 1 and lines[-1]["done"]
    assert lines[-1]["eval_count"] >= len(lines) - 1


def test_anthropic_events(base, model):
    body = {"model": model, "max_tokens": MAX_TOKENS, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    out = post(f"{base}/v1/messages", body, "anthropic-version: 2023-06-01")
    events = []
    for block in filter(None, out.split("\n\n")):
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), block
        assert json.loads(data[6:])["type"] == event[7:]
        events.append(event[7:])
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_error_status_and_body(base):
    out = curl("-o", "-", "-w", "\n%{http_code}", f"{base}/v1/chat/completions", "-d", '{"model": "nope", "messages": []}')
    body, status = out.rsplit("\n", 1)
    assert status == "404"
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
