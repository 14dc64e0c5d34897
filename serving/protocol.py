"""The chat API's request and response bodies, as pydantic models: the service builds every response from them and
``/openapi.json`` describes them (:mod:`.openapi`), so the documentation and the wire cannot drift apart.

Field names and values are OpenAI's (the official ``openai`` client reads them). A field with a default is optional
on the wire: :func:`wire` writes it only when the service set it, so a choice carries ``token_ids`` only with
``return_token_ids``, the first chunk of a stream has ``delta.role`` and no ``logprobs``, and the other chunks have
``"logprobs": null`` unless logprobs were asked for.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from onellm.serving.chat import ROLES, part_types

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


def wire(model: BaseModel) -> dict[str, Any]:
    """``model`` as the JSON object sent: the fields the service set, defaults left out."""
    return model.model_dump(mode="json", exclude_unset=True)


# --- the chat request -----------------------------------------------------------------------------------------------
STOP_SCHEMA = {  # what ChatService.parse_body accepts
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
        {"type": "null"},
    ]
}


def messages_schema() -> dict[str, Any]:
    """JSON schema of ``messages``: roles, and content as a string or a list of parts (one per :func:`part_types`)."""
    media = {
        "type": "object",
        "description": "exactly one of url (data:, allowlisted http(s):, file: under the allowed folder) or data "
        "(base64 of the file)",
        "properties": {
            "url": {"type": "string"},
            "data": {"type": "string"},
            "format": {"type": "string", "description": "file format, e.g. wav, npy, csv"},
            "sample_rate": {"type": "number", "exclusiveMinimum": 0, "description": "imu: samples per second"},
        },
        "oneOf": [{"required": ["url"]}, {"required": ["data"]}],
    }
    parts: list[dict[str, Any]] = [
        {
            "type": "object",
            "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        }
    ]
    for part_type in part_types():
        payload = {"anyOf": [media, {"type": "string"}]} if part_type.endswith("_url") else media  # a bare URL
        parts.append(
            {
                "type": "object",
                "required": ["type", part_type],
                "properties": {"type": {"const": part_type}, part_type: payload},
            }
        )
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": list(ROLES)},
            "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": parts}}, {"type": "null"}]},
        },
    }
    return {"type": "array", "minItems": 1, "items": message}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields we read; OpenAI fields we do not implement are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    model: str
    # validated by parse_chat (errors name the part: messages[0].content[1].image_url); the schema is for the docs
    messages: Annotated[list[Any], WithJsonSchema(messages_schema())]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Annotated[str | list[str] | None, WithJsonSchema(STOP_SCHEMA)] = None  # checked in parse_body
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a 64-bit seed, as vLLM's API takes
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool = False  # extension (as in vLLM): each choice also carries its generated token ids
    min_tokens: int = Field(default=0, ge=0)  # extension (as in vLLM): no end-of-sequence before this many tokens
    logprobs: bool = False  # each generated token's log-probability (raw model distribution, as vLLM reports it)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # and this many alternatives

    def stops(self) -> list[str]:
        """``stop`` as a list (OpenAI takes one string or several)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# --- responses (names as in the openai package's types) -------------------------------------------------------------
class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(description="natural log of the probability under the raw model distribution")
    bytes: list[int] = Field(description="the token's text as UTF-8 bytes")


class ChatCompletionTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the top_logprobs most likely tokens, most likely first")


class ChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] = Field(description="one per generated token (logprobs: true)")


class Choice(BaseModel):
    index: int = Field(ge=0)
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = Field(default=None, description="the generated token ids (return_token_ids)")


class Usage(BaseModel):
    prompt_tokens: int = Field(ge=0, description="each media input counts N+2 placeholder positions")
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice] = Field(min_length=1)
    usage: Usage


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, description="in each choice's first chunk")
    content: str


class ChunkChoice(BaseModel):
    index: int = Field(ge=0)
    delta: ChoiceDelta
    finish_reason: Literal["stop", "length"] | None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = Field(default=None, description="this chunk's token ids (return_token_ids)")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice] = Field(description="empty in the usage chunk")
    usage: Usage | None = Field(default=None, description="the last chunk, with stream_options.include_usage")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = Field(default=None, description="for a LoRA adapter: the served model it applies to")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard] = Field(min_length=1)


class Health(BaseModel):
    status: Literal["ok", "starting", "failed"] = Field(
        description="failed: the engine's worker died; the server is exiting (docs/api.md, Faults)"
    )
    engine: str


__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "Health",
    "ModelList",
    "messages_schema",
    "wire",
]
