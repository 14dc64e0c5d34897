"""What ``/openapi.json`` says about the server: request body, response bodies and every status a route answers.

The chat route reads and validates its body itself (so that every error has OpenAI's shape and the API key is
checked before the body), so FastAPI cannot derive the request schema from a parameter: :func:`chat_openapi` gives
it (with this server's model names and limits) and the schemas the event stream refers to. The models are those
the service builds its responses from (:mod:`.protocol`, :mod:`.errors`); tests/reliability/test_schemathesis.py
checks responses against this description.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from onellm.serving.errors import ErrorResponse
from onellm.serving.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Health, ModelList

REF = "#/components/schemas/{model}"


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
        503: _error("the engine is still starting, or its worker died and the server is exiting"),
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
        503: {"model": Health, "description": "the engine is still starting, or it failed (the server is exiting)"},
    }


def _schemas(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema and those it refers to, as OpenAPI components."""
    schema = model.model_json_schema(ref_template=REF)
    return {**schema.pop("$defs", {}), model.__name__: schema}


def chat_openapi(models: list[str], max_n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat route's ``openapi_extra`` (its JSON request body, ``model`` one of ``models``, ``n`` at most
    ``max_n``) and the component schemas that the body and the event stream refer to."""
    request = ChatCompletionRequest.__name__
    components = {**_schemas(ChatCompletionRequest), **_schemas(ChatCompletionChunk), **_schemas(ErrorResponse)}
    body = components[request]["properties"]
    body["model"]["enum"] = list(models)  # any other name: 404
    body["n"]["maximum"] = max_n
    ref = {"$ref": REF.format(model=request)}
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
    return extra, components


__all__ = ["chat_openapi", "chat_responses", "health_responses", "models_responses"]
