"""Tool calling against rill through the real clients. When a call is forced its arguments are constrained by the
tool's schema, so they must validate whatever the tiny model would have said; when the model may choose, only the
shape of the answer is checked.

- openai: `tool_choice` "required", a named function, "none" and "auto"; a forced call cut by `max_tokens`; streamed tool-call deltas exactly as
  OpenAI sends them (the first delta of each call carries id, type, name and empty arguments, later ones only
  argument fragments) and accumulated like a client does; the `chat.completions.stream` helper with
  `openai.pydantic_function_tool`; a round trip through a `tool` message; `parallel_tool_calls=False`; 400s;
- anthropic: `tool_choice` any, a named tool and none; `messages.stream` with its raw `content_block_start` and
  `input_json_delta` events; a round trip through a `tool_result` block;
- ollama: `tools=[...]` (no tool_choice there), streamed and not.
"""

import json
from typing import Literal

import anthropic
import jsonschema
import ollama
import openai
import pytest
from conftest import TIMEOUT
from pydantic import BaseModel

# A forced call must be complete JSON, so tool requests leave room for the whole call.
TOOL_MAX_TOKENS = 200

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD_PARAMETERS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "add": ADD_PARAMETERS}
DESCRIPTIONS = {"get_weather": "Get the current weather in a city.", "add": "Add two integers."}

OPENAI_TOOLS = [
    {"type": "function", "function": {"name": name, "description": DESCRIPTIONS[name], "parameters": schema}}
    for name, schema in SCHEMAS.items()
]
ANTHROPIC_TOOLS = [
    {"name": name, "description": DESCRIPTIONS[name], "input_schema": schema} for name, schema in SCHEMAS.items()
]

WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today, in celsius?"}]


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def anthropic_client(base):
    return anthropic.Anthropic(base_url=base, api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def ollama_client(base):
    return ollama.Client(host=base, timeout=TIMEOUT)


def request(model, messages=WEATHER_QUESTION, **extra):
    return dict(model=model, messages=messages, tools=OPENAI_TOOLS, max_tokens=TOOL_MAX_TOKENS, temperature=0, **extra)


def check_arguments(name, arguments, schemas=SCHEMAS):
    """The parsed arguments of a call to a known tool, validated against that tool's schema."""
    assert name in schemas, f"unknown tool {name!r}"
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    jsonschema.validate(arguments, schemas[name])
    return arguments


def check_tool_calls(choice, forced=True):
    """Checks a non-streamed OpenAI choice that must call tools; returns [(name, arguments)]."""
    assert choice.finish_reason == "tool_calls"
    message = choice.message
    assert message.role == "assistant"
    assert message.tool_calls, "no tool_calls"
    if forced:
        assert not message.content, "text beside a forced tool call"
    calls = []
    for call in message.tool_calls:
        assert call.id and call.type == "function"
        calls.append((call.function.name, check_arguments(call.function.name, call.function.arguments)))
    assert len({call.id for call in message.tool_calls}) == len(message.tool_calls), "tool call ids repeat"
    return calls


def stream_tool_calls(client, **args):
    """Streams a request and accumulates tool-call deltas by index as clients do.

    Returns (content, [(name, arguments)], finish_reason), checking on the way that the first delta of each call
    has its id, type "function", its name and arguments "", and that later deltas add only arguments.
    """
    content, calls, finishes = [], {}, []
    for chunk in client.chat.completions.create(**args, stream=True):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content.append(choice.delta.content or "")
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:
                assert delta.id, f"first delta of call {delta.index} has no id"
                assert delta.type == "function"
                assert delta.function.name in SCHEMAS
                assert delta.function.arguments == "", "the first delta of a call carries arguments ''"
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                # Clients concatenate every string they get, so a repeated id or name would corrupt it.
                assert not delta.id, "a later delta repeats the call id"
                if delta.function:
                    assert not delta.function.name, "a later delta repeats the function name"
                    calls[delta.index]["arguments"] += delta.function.arguments or ""
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    assert len(finishes) == 1, f"finish_reason in {len(finishes)} chunks"
    assert sorted(calls) == list(range(len(calls))), "tool call indexes are not 0..n-1"
    assert len({c["id"] for c in calls.values()}) == len(calls), "tool call ids repeat"
    parsed = [(c["name"], check_arguments(c["name"], c["arguments"])) for _, c in sorted(calls.items())]
    return "".join(content), parsed, finishes[0]


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "add"}}],
    ids=["required", "named_get_weather", "named_add"],
)
def test_forced_tool_call_streamed_matches_non_streamed(client, model, tool_choice):
    args = request(model, tool_choice=tool_choice)
    whole = check_tool_calls(client.chat.completions.create(**args).choices[0])
    if isinstance(tool_choice, dict):
        assert {name for name, _ in whole} == {tool_choice["function"]["name"]}
    content, streamed, finish = stream_tool_calls(client, **args)
    assert finish == "tool_calls"
    assert not content
    assert streamed == whole


def test_forced_tool_call_cut_by_max_tokens_is_never_text(client, model):
    """However early max_tokens cuts a forced call, no part of the call's own markup comes back as content: a call
    whose name was complete is reported with what it has of arguments, one cut before that is left out."""
    cuts = (1, 4, 8, 12, 16, 24, 32)
    named = 0
    for max_tokens in cuts:
        args = request(model, tool_choice="required") | {"max_tokens": max_tokens}
        choice = client.chat.completions.create(**args).choices[0]
        assert choice.finish_reason == "length", max_tokens
        assert not choice.message.content, f"max_tokens={max_tokens}: {choice.message.content!r}"
        whole = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        assert all(name in SCHEMAS for name, _ in whole), whole
        named += bool(whole)
        content, calls, finishes = [], {}, []
        for chunk in client.chat.completions.create(**args, stream=True):
            for c in chunk.choices:
                content.append(c.delta.content or "")
                for delta in c.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, ["", ""])
                    call[0] += delta.function.name or ""
                    call[1] += delta.function.arguments or ""
                finishes += [c.finish_reason] if c.finish_reason else []
        assert not "".join(content) and finishes == ["length"], max_tokens
        assert [tuple(c) for _, c in sorted(calls.items())] == whole, max_tokens
    # The range covers both sides: cuts inside the opening and cuts inside the arguments.
    assert 0 < named < len(cuts), named


def test_anthropic_forced_tool_use_cut_by_max_tokens_is_never_text(anthropic_client, model):
    for max_tokens in (1, 4, 8):
        args = anthropic_args(model, tool_choice={"type": "any"}) | {"max_tokens": max_tokens}
        m = anthropic_client.messages.create(**args)
        assert m.stop_reason == "max_tokens", max_tokens
        assert not "".join(b.text for b in m.content if b.type == "text"), m.content
        with anthropic_client.messages.stream(**args) as stream:
            final = stream.get_final_message()
        assert [(b.type, getattr(b, "text", None)) for b in final.content] == [
            (b.type, getattr(b, "text", None)) for b in m.content]


def test_parallel_tool_calls_false_gives_one_call(client, model):
    question = [{"role": "user", "content": "What is the weather in Paris and in Rome? Also add 2 and 3."}]
    args = request(model, messages=question, tool_choice="required", parallel_tool_calls=False)
    assert len(check_tool_calls(client.chat.completions.create(**args).choices[0])) == 1
    _, streamed, finish = stream_tool_calls(client, **args)
    assert finish == "tool_calls" and len(streamed) == 1


def test_stream_helper_with_pydantic_function_tool(client, model):
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    with client.chat.completions.stream(model=model, messages=WEATHER_QUESTION, tools=[tool], tool_choice="required",
                                        max_tokens=TOOL_MAX_TOKENS, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.id and call.type == "function" and call.function.name == "get_weather"
        assert isinstance(call.function.parsed_arguments, GetWeather)
        assert GetWeather.model_validate_json(call.function.arguments) == call.function.parsed_arguments
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.parsed_arguments for e in done] == [c.function.parsed_arguments for c in choice.message.tool_calls]


def test_tool_choice_none_answers_in_text(client, model):
    args = request(model, tool_choice="none")
    r = client.chat.completions.create(**args)
    choice = r.choices[0]
    assert choice.message.tool_calls in (None, [])
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    content, calls, finish = stream_tool_calls(client, **args)
    assert (content, calls, finish) == (choice.message.content, [], choice.finish_reason)


def test_tool_choice_auto_is_well_formed(client, model):
    for tool_choice in ("auto", None):
        args = request(model, **({"tool_choice": tool_choice} if tool_choice else {}))
        choice = client.chat.completions.create(**args).choices[0]
        if choice.message.tool_calls:
            check_tool_calls(choice, forced=False)
        else:
            assert choice.message.content
            assert choice.finish_reason in ("stop", "length")
        content, calls, finish = stream_tool_calls(client, **args)
        assert finish == choice.finish_reason
        if calls:
            assert finish == "tool_calls"
        else:
            assert content == choice.message.content


def test_tool_result_round_trip(client, model):
    first = client.chat.completions.create(**request(model, tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    check_tool_calls(first.choices[0])
    calls = first.choices[0].message.tool_calls
    messages = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls
            ],
        },
        *({"role": "tool", "tool_call_id": c.id, "content": "Sunny, 21 degrees celsius."} for c in calls),
    ]
    second = client.chat.completions.create(**request(model, messages=messages, tool_choice="none"))
    assert second.choices[0].message.content
    assert not second.choices[0].message.tool_calls
    assert second.choices[0].finish_reason in ("stop", "length")


BAD_TOOL_REQUESTS = {
    "unknown_function_in_tool_choice": dict(tools=OPENAI_TOOLS, tool_choice={"type": "function", "function": {"name": "no_such_tool"}}),
    "invalid_parameters_schema": dict(
        tools=[{"type": "function", "function": {"name": "broken", "parameters": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}],
        tool_choice="required",
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("case", list(BAD_TOOL_REQUESTS))
def test_bad_tool_requests_are_400(client, model, case, stream):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=WEATHER_QUESTION, max_tokens=16, temperature=0,
                                       stream=stream, **BAD_TOOL_REQUESTS[case])
    assert e.value.status_code == 400


def anthropic_args(model, messages=WEATHER_QUESTION, **extra):
    # As in test_anthropic.py, temperature goes in the body: this SDK version has no parameter for it.
    return dict(model=model, max_tokens=TOOL_MAX_TOKENS, messages=messages, tools=ANTHROPIC_TOOLS,
                extra_body={"temperature": 0}, **extra)


def check_tool_use(message, name=None, forced=True):
    """Checks an Anthropic message that must use tools; returns [(name, input)]."""
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses, f"no tool_use block in {[b.type for b in message.content]}"
    # A forced tool use starts at once, as Anthropic's does; otherwise text may come first.
    assert all(b.type in (("tool_use",) if forced else ("tool_use", "text")) for b in message.content)
    for block in uses:
        assert block.id
        assert isinstance(block.input, dict)
        check_arguments(block.name, block.input)
        if name:
            assert block.name == name
    return [(b.name, b.input) for b in uses]


@pytest.mark.parametrize(
    "tool_choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}, {"type": "tool", "name": "add"}],
    ids=["any", "tool_get_weather", "tool_add"],
)
def test_anthropic_forced_tool_use_streamed_matches_create(anthropic_client, model, tool_choice):
    args = anthropic_args(model, tool_choice=tool_choice)
    whole = check_tool_use(anthropic_client.messages.create(**args), tool_choice.get("name"))
    with anthropic_client.messages.stream(**args) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert check_tool_use(final, tool_choice.get("name")) == whole
    starts = [e for e in events if e.type == "content_block_start" and e.content_block.type == "tool_use"]
    assert [(e.content_block.name, e.content_block.input) for e in starts] == [(name, {}) for name, _ in whole]
    assert all(e.content_block.id for e in starts)
    for start, (_, arguments) in zip(starts, whole):
        fragments = [e.delta.partial_json for e in events
                     if e.type == "content_block_delta" and e.index == start.index and e.delta.type == "input_json_delta"]
        assert fragments, "no input_json_delta events"
        assert json.loads("".join(fragments)) == arguments


def test_anthropic_disable_parallel_tool_use_gives_one_call(anthropic_client, model):
    question = [{"role": "user", "content": "What is the weather in Paris and in Rome? Also add 2 and 3."}]
    m = anthropic_client.messages.create(**anthropic_args(model, messages=question, tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert len(check_tool_use(m)) == 1


def test_anthropic_tool_choice_none_answers_in_text(anthropic_client, model):
    m = anthropic_client.messages.create(**anthropic_args(model, tool_choice={"type": "none"}))
    assert m.content and all(b.type == "text" for b in m.content)
    assert m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_tool_choice_auto_is_well_formed(anthropic_client, model):
    m = anthropic_client.messages.create(**anthropic_args(model, tool_choice={"type": "auto"}))
    if any(b.type == "tool_use" for b in m.content):
        check_tool_use(m, forced=False)
    else:
        assert m.content and m.content[0].type == "text" and m.content[0].text
        assert m.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_tool_result_round_trip(anthropic_client, model):
    first = anthropic_client.messages.create(**anthropic_args(model, tool_choice={"type": "tool", "name": "get_weather"}))
    check_tool_use(first, "get_weather")
    uses = [b for b in first.content if b.type == "tool_use"]
    messages = [
        *WEATHER_QUESTION,
        {"role": "assistant", "content": [{"type": "tool_use", "id": b.id, "name": b.name, "input": b.input} for b in uses]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b.id, "content": "Sunny, 21 degrees celsius."} for b in uses]},
    ]
    second = anthropic_client.messages.create(**anthropic_args(model, messages=messages, tool_choice={"type": "none"}))
    assert second.content and all(b.type == "text" for b in second.content)
    assert second.content[0].text
    assert second.stop_reason in ("end_turn", "max_tokens")


OLLAMA_OPTIONS = {"num_predict": TOOL_MAX_TOKENS, "temperature": 0}
# The ollama SDK sends its own model of a tool, which keeps only some keywords (no additionalProperties): the
# arguments are checked against what it sends.
OLLAMA_SCHEMAS = {
    t["function"]["name"]: ollama.Tool.model_validate(t).model_dump(exclude_none=True, by_alias=True)["function"]["parameters"]
    for t in OPENAI_TOOLS
}


def ollama_calls(message):
    """The [(name, arguments)] of an Ollama message, each checked against its tool's schema."""
    calls = []
    for call in message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)
        calls.append((call.function.name, check_arguments(call.function.name, call.function.arguments, OLLAMA_SCHEMAS)))
    return calls


def test_ollama_tools_streamed_matches_non_streamed(ollama_client, model):
    args = dict(model=model, messages=WEATHER_QUESTION, tools=OPENAI_TOOLS, options=OLLAMA_OPTIONS)
    whole = ollama_client.chat(**args, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant"
    calls = ollama_calls(whole.message)
    assert calls or whole.message.content, "neither text nor tool calls"
    parts = list(ollama_client.chat(**args, stream=True))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].done_reason == whole.done_reason
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert [c for p in parts for c in ollama_calls(p.message)] == calls
