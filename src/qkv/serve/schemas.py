"""The request bodies ``qkv serve`` accepts, as pydantic models with OpenAI's field names and meanings.

Unknown fields are accepted and ignored (``extra="ignore"``): clients send ``user``, ``parallel_tool_calls``,
``store`` ... and a strict server would break them. Types are checked here (a wrong type is a 400 naming
the field); the sampling ranges are checked once, by ``qkv.generate.GenerationConfig``.

Our extras beyond OpenAI's fields (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``) go in the
body as extra fields, e.g. ``client.chat.completions.create(..., extra_body={"top_k": 40})``.

The sampling numbers a request may set (``SAMPLING_FIELDS``: temperature, top_p, top_k, min_p, the three
penalties, seed) are GenerationConfig's own fields, by the same names and meanings, so they are read from
it: a number added to GenerationConfig is a request field too. Each defaults to None, "not given", which
the model's own defaults and then GenerationConfig's fill (``openai_api.generation_config``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ..generate import GenerationConfig

MAX_N = 16                  # choices per request
MAX_TOP_LOGPROBS = 20       # OpenAI's limit


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class Message(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    @model_validator(mode="after")
    def _content_unless_assistant(self):
        if self.content is None and self.role != "assistant":      # (an assistant turn may carry tool calls)
            raise ValueError(f"a {self.role} message needs content (a string or a list of text parts)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Lenient):
    include_usage: bool = False


class JsonSchema(Lenient):
    name: str = "response"
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchema | None = None


def Count(default, **bounds):
    """An integer field that takes JSON integers only: OpenAI rejects ``true`` or ``"5"`` for a count,
    where pydantic's lax mode would read them as 1 and 5."""
    return Field(default, strict=True, **bounds)


def _number_fields(cls) -> dict[str, type]:
    """{field: int or float} for the number fields of a dataclass (``int | None`` counts as int)."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        kinds = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        if kinds in ([int], [float]):
            out[f.name] = kinds[0]
    return out


# every GenerationConfig number but max_new_tokens, which a request asks for as max_tokens (OpenAI's name,
# checked against the context and the cap by openai_api.budget)
SAMPLING_FIELDS = {name: kind for name, kind in _number_fields(GenerationConfig).items() if name != "max_new_tokens"}
SamplingNumbers = create_model("SamplingNumbers", __base__=Lenient, **{
    name: (kind | None, Count(None) if kind is int else None) for name, kind in SAMPLING_FIELDS.items()})


class Sampling(SamplingNumbers):
    """The fields chat and completions share: ``SAMPLING_FIELDS`` (from GenerationConfig), and these."""
    model: str | None = None
    n: int = Count(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    max_tokens: int | None = Count(None, ge=1)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    ignore_eos: bool = False                            # our extra


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Count(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Count(None, ge=0, le=MAX_TOP_LOGPROBS)
    # tool calling is not implemented: a request that relies on it is refused (app.py), never ignored
    tools: list | None = None
    tool_choice: Union[str, dict, None] = None


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]
    logprobs: int | None = Count(None, ge=0, le=5)      # completions: the number of alternatives (OpenAI: <= 5)
    echo: bool = False


class EmbeddingRequest(Lenient):
    model: str | None = None
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
