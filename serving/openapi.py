"""What ``/openapi.json`` says about the server: request body, response bodies and every status a route answers.

The chat route reads and validates its body itself (so that every error has OpenAI's shape and the API key is
checked before the body), so FastAPI cannot derive the request schema from a parameter: :func:`chat_openapi` gives
it (with this server's model names and limits) and the schemas the event stream refers to. The response models
describe what the handlers in :mod:`.app` build; tests/reliability/test_schemathesis.py checks responses against
this description.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from onellm.serving.chat import ROLES, part_types

REF = "#/components/schemas/{model}"


# --- errors ---------------------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error | authentication_error | not_found_error | ...")
    param: str | None = Field(description="the offending request field, e.g. messages[0].content[1].image_url")
    code: str | None = Field(description="invalid_api_key | model_not_found | timeout | null")


class ErrorResponse(BaseModel):
    """OpenAI's error shape (:mod:`.errors`)."""

    error: ErrorDetail


# --- responses ------------------------------------------------------------------------------------------------------
class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float = Field(description="natural log of the probability under the raw model distribution")
    bytes: list[int] = Field(description="the token's text as UTF-8 bytes")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the top_logprobs most likely tokens, most likely first")


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] = Field(description="one per generated token (logprobs: true)")


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


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice] = Field(min_length=1)
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, description="in each choice's first chunk")
    content: str


class ChunkChoice(BaseModel):
    index: int = Field(ge=0)
    delta: Delta
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
    status: Literal["ok", "starting"]
    engine: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Each server-sent event (OpenAPI 3.1 reading: the schema of an event stream describes one event): a chunk as JSON,
# an error object if generation fails after the stream started, and last "[DONE]".
STREAM_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {"$ref": REF.format(model="ChatCompletionChunk")},
                            {"$ref": REF.format(model="ErrorResponse")},
                        ]
                    },
                },
            ]
        }
    },
}


def chat_responses() -> dict[int | str, dict[str, Any]]:
    """``responses=`` of POST /v1/chat/completions (fresh dicts: FastAPI adds to them)."""
    return {
        200: {
            "model": ChatCompletion,
            "description": "a chat.completion, or with stream=true server-sent chat.completion.chunk events",
            "content": {"text/event-stream": {"schema": STREAM_EVENT}},
        },
        400: _error("invalid JSON, field values, media or URLs; prompt or max_tokens beyond the context"),
        401: _error("missing or wrong API key (when the server requires one)"),
        404: _error("unknown model"),
        413: _error("request body or one media input above its size limit"),
        429: _error("--max-queue requests in flight; retry after Retry-After seconds"),
        503: _error("the engine is still starting"),
        504: _error("--request-timeout exceeded"),
    }


def models_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": ModelList, "description": "the served model and its LoRA adapters"},
        401: _error("missing or wrong API key (when the server requires one)"),
    }


def health_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": Health, "description": "the engine is up"},
        503: {"model": Health, "description": "the engine is still starting"},
    }


# --- the chat request -----------------------------------------------------------------------------------------------
STOP_SCHEMA = {  # what parse_body accepts
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


def _schemas(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema and those it refers to, as OpenAPI components."""
    schema = model.model_json_schema(ref_template=REF)
    return {**schema.pop("$defs", {}), model.__name__: schema}


def chat_openapi(request: type[BaseModel], models: list[str], max_n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat route's ``openapi_extra`` (its JSON request body, ``model`` one of ``models``, ``n`` at most
    ``max_n``) and the component schemas that the body and the event stream refer to."""
    components = {**_schemas(request), **_schemas(ChatCompletionChunk), **_schemas(ErrorResponse)}
    body = components[request.__name__]["properties"]
    body["model"]["enum"] = list(models)  # any other name: 404
    body["n"]["maximum"] = max_n
    ref = {"$ref": REF.format(model=request.__name__)}
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
    return extra, components


__all__ = [
    "STOP_SCHEMA",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ErrorResponse",
    "chat_openapi",
    "chat_responses",
    "health_responses",
    "messages_schema",
    "models_responses",
]
