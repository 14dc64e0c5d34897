"""Errors the server returns, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# OpenAI's error "type" per HTTP status; clients (the openai package) map the status to an exception class.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error | authentication_error | not_found_error | ...")
    param: str | None = Field(description="the offending request field, e.g. messages[0].content[1].image_url")
    code: str | None = Field(
        description="invalid_api_key | model_not_found | context_length_exceeded | timeout | engine_failed | null"
    )


class ErrorResponse(BaseModel):
    """OpenAI's error shape; every error response and the error event of a stream carry it."""

    error: ErrorDetail


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's error body. ``param`` names the offending request field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    detail = ErrorDetail(message=message, type=_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return ErrorResponse(error=detail).model_dump(mode="json")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)
