"""instructor over rill's OpenAI dialect: `Mode.TOOLS` (a forced function call) and `Mode.JSON_SCHEMA` (a
`json_schema` response format) extract a pydantic model on the first try, since constrained decoding makes the
answer valid. `max_retries=0`: a reply that fails validation is an error, not a second request.

instructor pins `jiter<0.15` while openai 3.x needs `jiter>=0.16`, so it is installed apart with `--no-deps`
(see scripts/sdk-test.sh); it runs fine on the newer jiter.
"""

import instructor
import openai
import pytest
from conftest import TIMEOUT
from pydantic import BaseModel, Field

MAX_TOKENS = 200


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int = Field(ge=0, le=130)


TEXT = [{"role": "user", "content": "Extract the person: Alice is a 30 year old engineer from Lyon."}]


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA], ids=["tools", "json_schema"])
def test_instructor_extracts_a_model(base, model, mode):
    client = instructor.from_openai(openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0), mode=mode)
    person, completion = client.create_with_completion(response_model=Person, messages=TEXT, model=model,
                                                       max_tokens=MAX_TOKENS, temperature=0, max_retries=0)
    assert isinstance(person, Person)
    choice = completion.choices[0]
    if mode == instructor.Mode.TOOLS:
        assert choice.finish_reason == "tool_calls"
        assert [c.function.name for c in choice.message.tool_calls] == ["Person"]
        assert Person.model_validate_json(choice.message.tool_calls[0].function.arguments).model_dump() == person.model_dump()
    else:
        assert choice.finish_reason == "stop"
        assert Person.model_validate_json(choice.message.content).model_dump() == person.model_dump()
