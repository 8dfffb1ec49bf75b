"""Agent and extraction frameworks over rill's OpenAI dialect: what they send (forced tool calls, `json_schema`
response formats, `max_completion_tokens`, strict tools) and how they read the answer (parsed content, tool-call
deltas merged by index) must work end to end with constrained decoding.

- LangChain `ChatOpenAI`: `with_structured_output` with its default method, `json_schema` and
  `function_calling`; `bind_tools(..., tool_choice=name)`, invoked and streamed;
- pydantic-ai: an `Agent` on `OpenAIChatModel` with an `OpenAICompatibleProvider` pointed at rill, with tool
  output and native output, run and streamed; and an agent with a plain tool plus structured output, bounded by
  a request limit.

instructor is in test_instructor.py: it cannot be installed by the same pip resolution as openai 3.x.
Every run is bounded: max_tokens, no client retries, a timeout, and a request limit for the agents.
"""

import functools
import operator

import jsonschema
import pytest
from conftest import TIMEOUT
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from pydantic import BaseModel
from pydantic_ai import (
    Agent,
    ModelResponse,
    NativeOutput,
    ToolCallPart,
    UsageLimitExceeded,
    UsageLimits,
    capture_run_messages,
)
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider
from pydantic_ai.settings import ModelSettings

from test_tools import WEATHER_PARAMETERS

MAX_TOKENS = 200
RUN_TIMEOUT = 3 * TIMEOUT
CITY_QUESTION = "Name a big city and the country it is in."
WEATHER_QUESTION = "What is the weather like in Paris today, in celsius?"

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": WEATHER_PARAMETERS},
}


class City(BaseModel):
    """A city and the country it is in."""

    city: str
    country: str


def langchain_chat(base, model):
    return ChatOpenAI(base_url=f"{base}/v1", api_key="unused", model=model, temperature=0, max_tokens=MAX_TOKENS,
                      max_retries=0, timeout=TIMEOUT, use_responses_api=False)


@pytest.mark.parametrize("method", [None, "json_schema", "function_calling"], ids=["default", "json_schema", "function_calling"])
def test_langchain_with_structured_output(base, model, method):
    llm = langchain_chat(base, model)
    structured = llm.with_structured_output(City, include_raw=True, **({"method": method} if method else {}))
    out = structured.invoke(CITY_QUESTION)
    assert out["parsing_error"] is None
    assert isinstance(out["parsed"], City)
    raw = out["raw"]
    assert isinstance(raw, AIMessage)
    expected_finish = "tool_calls" if method == "function_calling" else "stop"
    assert raw.response_metadata["finish_reason"] == expected_finish


def check_langchain_tool_calls(message):
    assert message.tool_calls, "no tool_calls"
    assert not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["id"] and call["name"] == "get_weather"
        jsonschema.validate(call["args"], WEATHER_PARAMETERS)
    return [(call["name"], call["args"]) for call in message.tool_calls]


def test_langchain_bind_tools_invoked_and_streamed(base, model):
    llm = langchain_chat(base, model).bind_tools([WEATHER_TOOL], tool_choice="get_weather")
    message = llm.invoke(WEATHER_QUESTION)
    assert isinstance(message, AIMessage)
    assert message.response_metadata["finish_reason"] == "tool_calls"
    whole = check_langchain_tool_calls(message)
    # Chunks merge by tool-call index, concatenating strings: a repeated id or name would corrupt the call.
    merged = functools.reduce(operator.add, llm.stream(WEATHER_QUESTION))
    assert check_langchain_tool_calls(merged) == whole
    assert merged.response_metadata["finish_reason"] == "tool_calls"


def rill_model(base, model):
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    return OpenAIChatModel(model, provider=OpenAICompatibleProvider("rill", openai_client=client))


SETTINGS = ModelSettings(max_tokens=MAX_TOKENS, temperature=0)


@pytest.mark.parametrize("native", [False, True], ids=["tool_output", "native_output"])
def test_pydantic_ai_structured_output(base, model, native):
    # retries=0: an answer that does not validate is an error, not a second try.
    agent = Agent(rill_model(base, model), output_type=NativeOutput(City) if native else City,
                  model_settings=SETTINGS, retries=0)
    limits = UsageLimits(request_limit=1)
    result = agent.run_sync(CITY_QUESTION, usage_limits=limits, timeout=RUN_TIMEOUT)
    assert isinstance(result.output, City)
    with agent.run_stream_sync(CITY_QUESTION, usage_limits=limits, timeout=RUN_TIMEOUT) as streamed:
        assert streamed.get_output() == result.output


def test_pydantic_ai_tool_then_structured_output(base, model):
    agent = Agent(rill_model(base, model), output_type=City, model_settings=SETTINGS, retries=0)
    cities = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        assert isinstance(city, str)
        cities.append(city)
        return "Sunny, 21 degrees celsius."

    # The model may call get_weather again and again; the request limit ends that, and is the only error allowed.
    with capture_run_messages() as messages:
        try:
            result = agent.run_sync(f"{WEATHER_QUESTION} Then name the city and its country.",
                                    usage_limits=UsageLimits(request_limit=3), timeout=RUN_TIMEOUT)
        except UsageLimitExceeded:
            result = None
    responses = [m for m in messages if isinstance(m, ModelResponse)]
    assert responses
    # Output is only possible through a tool here, so rill must have called one in every response.
    for response in responses:
        calls = [p for p in response.parts if isinstance(p, ToolCallPart)]
        assert calls, f"a response without tool calls: {response.parts}"
        assert {c.tool_name for c in calls} <= {"get_weather", "final_result"}
    # Each get_weather call ran with validated arguments (a call next to final_result may be skipped).
    assert len(cities) <= sum(c.tool_name == "get_weather" for r in responses for c in r.parts if isinstance(c, ToolCallPart))
    if result is not None:
        assert isinstance(result.output, City)
