"""The official `anthropic` package against rill: `messages.create`, `messages.stream` with `text_stream`,
`count_tokens`, and typed errors."""

import anthropic
import pytest
from conftest import MAX_TOKENS, TIMEOUT

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def client(base):
    return anthropic.Anthropic(base_url=base, api_key="unused", timeout=TIMEOUT, max_retries=0)


def args(model, temperature=0, **extra):
    # This SDK version has no `temperature` parameter; rill still reads the field, so it goes in the body.
    return dict(model=model, max_tokens=MAX_TOKENS, messages=QUESTION, extra_body={"temperature": temperature}, **extra)


def test_create(client, model):
    m = client.messages.create(**args(model, system="You are brief."))
    assert m.type == "message" and m.role == "assistant" and m.model == model
    assert "Paris" in m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def test_text_stream_matches_create(client, model):
    whole = client.messages.create(**args(model))
    with client.messages.stream(**args(model)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_stop_sequences(client, model):
    text = client.messages.create(**args(model)).content[0].text
    assert len(text) > 2
    stop = text[1:3]
    m = client.messages.create(**args(model, stop_sequences=[stop]))
    assert m.content[0].text == text[: text.index(stop)]
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", stop)


def test_count_tokens(client, model):
    counted = client.messages.count_tokens(model=model, messages=QUESTION)
    assert counted.input_tokens == client.messages.create(**args(model)).usage.input_tokens


def test_errors_are_typed(client, model):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(**args("no-such-model"))
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(**args(model, temperature=1.5))
    assert "temperature" in str(e.value)
