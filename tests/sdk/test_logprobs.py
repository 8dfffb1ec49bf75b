"""Same request, same answer, over HTTP with the real clients, and log probabilities in every dialect.

* A greedy question gives one text in all three dialects, streamed and not, cold and after prefix-cache hits,
  alone and inside a burst of 8 concurrent mixed requests.
* logprobs through the official `openai` and `ollama` packages: shapes, sorted top lists, the greedy token
  first, streamed equal to non-streamed, and the generated tokens' values equal (to the bit) to what the same
  server reports for the same tokens scored as a prompt (`/v1/completions` with `echo`).
* Bad values are a 400 in the dialect's error shape.
"""

import json
import math
import threading
import uuid

import anthropic
import httpx
import ollama
import openai
import pytest
from conftest import TIMEOUT

TOKENS = 24


def question():
    # A fresh question each run, so the first request is cold (no prefix-cache entry can match it).
    return f"In one sentence, what is a river? (ref {uuid.uuid4().hex[:8]})"


@pytest.fixture(scope="module")
def oa(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def ol(base):
    return ollama.Client(host=base, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def an(base):
    return anthropic.Anthropic(base_url=base, api_key="unused", timeout=TIMEOUT, max_retries=0)


def ask(kind, clients, model, q):
    """One greedy answer to `q` through one dialect, streamed or not; returns (text, cached prompt tokens)."""
    oa, ol, an = clients
    msgs = [{"role": "user", "content": q}]
    if kind == "openai":
        r = oa.chat.completions.create(model=model, messages=msgs, max_tokens=TOKENS, temperature=0)
        return r.choices[0].message.content, r.usage.prompt_tokens_details.cached_tokens
    if kind == "openai-stream":
        chunks = oa.chat.completions.create(model=model, messages=msgs, max_tokens=TOKENS, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
        text, cached = "", None
        for c in chunks:
            if c.choices:
                text += c.choices[0].delta.content or ""
            if c.usage:
                cached = c.usage.prompt_tokens_details.cached_tokens
        return text, cached
    # Ollama's defaults sample with a repeat penalty: turn both off for the same greedy request.
    options = {"num_predict": TOKENS, "temperature": 0, "repeat_penalty": 1.0}
    if kind == "ollama":
        return ol.chat(model=model, messages=msgs, options=options, stream=False).message.content, None
    if kind == "ollama-stream":
        return "".join(p.message.content for p in ol.chat(model=model, messages=msgs, options=options,
                                                          stream=True)), None
    if kind == "anthropic":
        r = an.messages.create(model=model, max_tokens=TOKENS, messages=msgs, extra_body={"temperature": 0})
        return "".join(b.text for b in r.content), None
    if kind == "anthropic-stream":
        with an.messages.stream(model=model, max_tokens=TOKENS, messages=msgs,
                                extra_body={"temperature": 0}) as s:
            return "".join(s.text_stream), None
    raise ValueError(kind)


KINDS = ["openai", "openai-stream", "ollama", "ollama-stream", "anthropic", "anthropic-stream"]


def test_one_text_in_every_dialect_cold_cached_and_in_a_burst(oa, ol, an, model):
    clients = (oa, ol, an)
    q = question()
    # Cold: only the chat template's shared beginning (its default system prompt) can come from the cache.
    cold, shared_prefix = ask("openai", clients, model, q)
    assert cold
    hits = []
    for kind in KINDS:
        text, c = ask(kind, clients, model, q)
        assert text == cold, f"{kind} after a cache hit"
        if c is not None:
            hits.append(c)
    assert hits and all(c > shared_prefix for c in hits), f"later requests reuse the question: {hits}"

    # A burst of 8 concurrent requests: the question in every dialect, beside other questions.
    results, errors = {}, []

    def run(i, kind, prompt):
        try:
            results[i] = (prompt, ask(kind, clients, model, prompt)[0])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    jobs = [(kind, q) for kind in KINDS] + [("openai-stream", question()), ("ollama", question())]
    threads = [threading.Thread(target=run, args=(i, k, p)) for i, (k, p) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=4 * TIMEOUT)
    assert not errors, errors
    assert len(results) == len(jobs)
    for i, (prompt, text) in results.items():
        if prompt == q:
            assert text == cold, f"{jobs[i][0]} inside a burst"


def chat_logprobs(oa, model, q, stream, top=5):
    msgs = [{"role": "user", "content": q}]
    args = dict(model=model, messages=msgs, max_tokens=TOKENS, temperature=0, logprobs=True, top_logprobs=top)
    if not stream:
        r = oa.chat.completions.create(**args)
        return r.choices[0].message.content, r.choices[0].logprobs.content, r
    text, entries = "", []
    for c in oa.chat.completions.create(**args, stream=True):
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            entries += c.choices[0].logprobs.content
        if c.choices:
            text += c.choices[0].delta.content or ""
    return text, entries, None


def check_entries(entries, top):
    assert entries
    for e in entries:
        assert e.logprob <= 0 and math.isfinite(e.logprob)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
        alts = [a.logprob for a in e.top_logprobs]
        assert len(alts) == top
        assert alts == sorted(alts, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)
        assert sum(math.exp(a) for a in alts) <= 1 + 1e-6


def test_openai_chat_logprobs(oa, model, base):
    q = question()
    text, entries, whole = chat_logprobs(oa, model, q, stream=False)
    check_entries(entries, 5)
    # The entries are the answer's tokens: their bytes make its text.
    assert b"".join(bytes(e.bytes) for e in entries).decode() == text
    generated = whole.usage.completion_tokens
    assert len(entries) in (generated, generated - 1), "one entry per token (an ending EOS has none)"
    s_text, s_entries, _ = chat_logprobs(oa, model, q, stream=True)
    assert s_text == text
    assert [(e.token, e.logprob) for e in s_entries] == [(e.token, e.logprob) for e in entries]

    # The same prompt through /v1/completions (as ids) generates the same tokens with the same values, and
    # those tokens, scored teacher-forced as part of a prompt (echo), get the very same values again.
    prompt_ids = httpx.post(f"{base}/tokenize", json={"messages": [{"role": "user", "content": q}]},
                            timeout=TIMEOUT).json()["tokens"]
    common = {"logprobs": 0, "temperature": 0, "return_tokens_as_token_ids": True}
    gen = httpx.post(f"{base}/v1/completions", timeout=TIMEOUT,
                     json={"prompt": prompt_ids, "max_tokens": TOKENS, **common}).json()["choices"][0]
    assert gen["text"] == text
    assert gen["logprobs"]["token_logprobs"] == [e.logprob for e in entries]
    gen_ids = [int(t.split(":")[1]) for t in gen["logprobs"]["tokens"]]
    scored = httpx.post(f"{base}/v1/completions", timeout=TIMEOUT,
                        json={"prompt": prompt_ids + gen_ids, "echo": True, "max_tokens": 1, **common}).json()
    lp = scored["choices"][0]["logprobs"]
    n = len(prompt_ids)
    assert [int(t.split(":")[1]) for t in lp["tokens"][:n + len(gen_ids)]] == prompt_ids + gen_ids
    assert lp["token_logprobs"][n:n + len(gen_ids)] == [e.logprob for e in entries]


def test_openai_completions_echo_logprobs(oa, model):
    prompt = "The river ran past the"
    r = oa.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, logprobs=3, echo=True)
    c = r.choices[0]
    assert c.text.startswith(prompt) and len(c.text) > len(prompt)
    lp = c.logprobs
    n = r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) in (n, n - 1)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 4 for t in lp.top_logprobs[1:]), "3 alternatives plus the chosen token"
    assert lp.text_offset == sorted(lp.text_offset)
    # Streamed: the prompt's chunk first, then the completion; the same values.
    chunks = list(oa.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, logprobs=3,
                                        echo=True, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == c.text
    streamed = [x for ch in chunks if ch.choices[0].logprobs for x in ch.choices[0].logprobs.token_logprobs]
    assert streamed == lp.token_logprobs


def test_ollama_logprobs(ol, model):
    msgs = [{"role": "user", "content": question()}]
    options = {"num_predict": TOKENS, "temperature": 0, "repeat_penalty": 1.0}
    whole = ol.chat(model=model, messages=msgs, options=options, logprobs=True, top_logprobs=3, stream=False)
    assert whole.logprobs
    for e in whole.logprobs:
        alts = [a.logprob for a in e.top_logprobs]
        assert len(alts) == 3 and alts == sorted(alts, reverse=True)
        assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)
    parts = list(ol.chat(model=model, messages=msgs, options=options, logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for p in parts for e in (p.logprobs or [])]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole.logprobs]
    assert "".join(p.message.content for p in parts) == whole.message.content
    g = ol.generate(model=model, prompt="Say yes.", options=options, logprobs=True, stream=False)
    assert g.logprobs and all(e.logprob <= 0 for e in g.logprobs)


def test_bad_logprob_values_are_400s(oa, ol, base, model):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        oa.chat.completions.create(model=model, messages=msgs, max_tokens=2, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        oa.chat.completions.create(model=model, messages=msgs, max_tokens=2, top_logprobs=2)
    for bad in [True, "5", 21, -1, 2.5]:
        r = httpx.post(f"{base}/v1/completions", timeout=TIMEOUT,
                       json={"model": model, "prompt": "hi", "max_tokens": 2, "logprobs": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(ollama.ResponseError) as e:
        ol.chat(model=model, messages=msgs, options={"num_predict": 2}, logprobs=True, top_logprobs=21)
    assert e.value.status_code == 400
    r = httpx.post(f"{base}/api/generate", timeout=TIMEOUT,
                   content=json.dumps({"model": model, "prompt": "hi", "top_logprobs": "x"}))
    assert r.status_code == 400 and "error" in r.json()
