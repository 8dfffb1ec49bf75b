"""The official `openai` package against rill: chat and legacy completions, sync and async, streaming with and
without `stream_options.include_usage`, model listing, and typed errors."""

import asyncio

import openai
import pytest
from conftest import MAX_TOKENS, TIMEOUT

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def greedy(model, **extra):
    return {"model": model, "messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}


def test_models_list_and_retrieve(client, model):
    ids = [m.id for m in client.models.list()]
    assert ids == [model]
    assert client.models.retrieve(model).owned_by == "rill"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_non_streaming(client, model):
    r = client.chat.completions.create(**greedy(model))
    assert r.object == "chat.completion"
    assert r.model == model
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_sync_stream_with_usage_matches_non_streaming(client, model):
    whole = client.chat.completions.create(**greedy(model))
    chunks = list(client.chat.completions.create(**greedy(model), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_none(client, model):
    chunks = list(client.chat.completions.create(**greedy(model), stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_async_stream_matches_sync(client, base, model):
    whole = client.chat.completions.create(**greedy(model))

    async def run():
        aclient = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        stream = await aclient.chat.completions.create(**greedy(model), stream=True, stream_options={"include_usage": True})
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
        await aclient.close()
        return "".join(parts), usage

    text, usage = asyncio.run(run())
    assert text == whole.choices[0].message.content
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_seeded_sampling_is_reproducible(client, model):
    args = dict(model=model, messages=QUESTION, max_tokens=16, temperature=0.9, seed=1234)
    a = client.chat.completions.create(**args).choices[0].message.content
    b = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**args, stream=True) if c.choices)
    assert a == b


def test_legacy_completions(client, model):
    args = dict(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    whole = client.completions.create(**args)
    assert whole.object == "text_completion"
    text = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True) if c.choices)
    assert text == whole.choices[0].text
    assert whole.usage.completion_tokens <= 8


def test_stop_sequence_never_leaks(client, model):
    whole = client.chat.completions.create(**greedy(model))
    text = whole.choices[0].message.content
    assert len(text) > 2
    stop = text[1:3]
    cut = client.chat.completions.create(**greedy(model, stop=[stop]))
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_are_typed(client, model):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(**greedy("no-such-model"))
    assert "no-such-model" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**greedy(model, n=2))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**greedy(model, temperature=5))
