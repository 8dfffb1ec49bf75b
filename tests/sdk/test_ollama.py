"""The official `ollama` package against rill: chat and generate, streaming and not, and the model routes."""

import ollama
import pytest
from conftest import MAX_TOKENS, TIMEOUT

OPTIONS = {"num_predict": MAX_TOKENS, "temperature": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def client(base):
    return ollama.Client(host=base, timeout=TIMEOUT)


def test_chat_stream_matches_non_streaming(client, model):
    whole = client.chat(model=model, messages=QUESTION, options=OPTIONS, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert "Paris" in whole.message.content
    assert whole.eval_count > 0 and whole.prompt_eval_count > 0
    parts = list(client.chat(model=model, messages=QUESTION, options=OPTIONS, stream=True))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_generate_stream_matches_non_streaming(client, model):
    args = dict(model=model, prompt="Why is the sky blue? One sentence.", options=OPTIONS)
    whole = client.generate(**args, stream=False)
    assert whole.response and whole.done
    parts = list(client.generate(**args, stream=True))
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].context == whole.context
    assert parts[-1].total_duration > 0


def test_seeded_generate_is_reproducible(client, model):
    args = dict(model=model, prompt="Write a word.", options={"num_predict": 12, "seed": 42})
    a = client.generate(**args, stream=False).response
    b = "".join(p.response for p in client.generate(**args, stream=True))
    assert a == b


def test_model_routes(client, model):
    names = [m.model for m in client.list().models]
    assert names == [f"{model}:latest"]
    shown = client.show(model)
    assert shown.details.quantization_level
    assert [m.model for m in client.ps().models] == [f"{model}:latest"]


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=QUESTION, options=OPTIONS)
    assert e.value.status_code == 404
