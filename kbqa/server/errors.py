"""One error shape for every route: `{"error": {"code", "message"}}`.

Bad input is a 4xx, never a 5xx: malformed JSON is 400, a body that does not fit the schema
is 422 (FastAPI's own validation handler is replaced), an unknown KB is 404, a body over the
size limit is 413, and a full generation queue is 503 with `Retry-After`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from kbqa.errors import KBQAError, NotFound
from kbqa.ingest.pipeline import IngestUsageError
from kbqa.llm.errors import LLMUnavailable
from kbqa.storage.embeddings import EmbeddingUnavailable
from kbqa.storage.errors import (
    DatabaseUnavailable,
    EmbeddingMismatch,
    InvalidKBName,
    KBBusy,
    KBDamaged,
    KBExists,
    KBNotFound,
    StorageError,
)

log = logging.getLogger("kbqa.server")

RETRY_AFTER_BUSY_S = 2
"""What `Retry-After` says when a KB is locked by a writer."""


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Malformed request (e.g. invalid JSON)"),
        (401, "Missing or wrong API key"),
        (403, "The API key's scope does not allow this"),
        (404, "Unknown knowledge base, document, job or model (or one the key may not see)"),
        (413, "Body or upload over the size limit, or input longer than the model's context"),
        (422, "Request does not fit the schema, or an invalid name"),
        (429, "Too many wrong API keys from this address (see Retry-After)"),
        (503, "Generation queue full or timed out (see Retry-After)"),
    )
}
"""The documented error responses, declared on every router so the OpenAPI schema tells them."""

CONFLICT_RESPONSE: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "A knowledge base of that name exists"}
}


class ApiError(Exception):
    """An error a handler reports on purpose, with its HTTP status and stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_json(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_json(code, message), status_code=status, headers=headers)


# Errors raised below the server on purpose, most specific first: (type, status, code).
_DOMAIN_ERRORS: Sequence[tuple[type[Exception], int, str]] = (
    (InvalidKBName, 422, "invalid_kb_name"),
    (KBNotFound, 404, "kb_not_found"),
    (NotFound, 404, "kb_not_found"),  # the answering path's name for the same thing
    (KBExists, 409, "kb_exists"),
    (EmbeddingMismatch, 422, "embedding_mismatch"),
    (EmbeddingUnavailable, 422, "embedding_unavailable"),
    (IngestUsageError, 422, "invalid_request"),
    (KBBusy, 503, "kb_busy"),
    (DatabaseUnavailable, 503, "database_unavailable"),
    (KBDamaged, 500, "kb_damaged"),
    (StorageError, 422, "storage_error"),
    (LLMUnavailable, 503, "llm_unavailable"),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ShuttingDown(ApiError):
    """The server is stopping: it takes no new answer or upload (503, retry on the next one)."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "shutting_down",
            "the server is shutting down; retry on the next one",
            headers={"Retry-After": "5"},
        )


def api_error_for(exc: Exception) -> ApiError | None:
    """The ApiError a storage, ingest or answering error stands for; None if it is a bug."""
    if isinstance(exc, ApiError):
        return exc
    for kind, status, code in _DOMAIN_ERRORS:
        if isinstance(exc, kind):
            return _with_retry(ApiError(status, code, str(exc)))
    if isinstance(exc, KBQAError):
        return _with_retry(ApiError(exc.http_status, exc.code, str(exc)))
    return None


def _with_retry(error: ApiError) -> ApiError:
    if error.status == 503:
        error.headers.setdefault("Retry-After", str(RETRY_AFTER_BUSY_S))
    return error


def describe_validation_error(errors: Sequence[Any]) -> str:
    """One line naming the first bad field, e.g. `question: Field required`."""
    if not errors:
        return "invalid request"
    first = errors[0]
    # Drop the request part ("body") and pydantic's names for union branches ("list[str]").
    loc = [
        str(part)
        for part in first.get("loc", ())
        if part not in ("body", "query", "path") and not any(c in str(part) for c in "[(")
    ]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    error = api_error_for(exc)
    if error is None:
        return await _internal_error(request, exc)
    if error.status >= 500 and error.status != 503:
        log.error("%s %s failed: %s", request.method, request.url.path, error.message)
    return error_response(error.status, error.code, error.message, error.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    if any(isinstance(e.get("input"), bytes) and e.get("loc") == ("body",) for e in errors):
        # The body was not read as JSON at all (a Content-Type other than application/json).
        return error_response(
            400, "malformed_json", "the request body must be JSON (Content-Type: application/json)"
        )
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return error_response(
            422, "invalid_request", "body: Field required (the request body is empty)"
        )
    return error_response(422, "invalid_request", describe_validation_error(errors))


def _unreadable_json(exc: BaseException | None) -> str | None:
    """Why FastAPI could not parse a JSON body (it reports every such cause as one 400
    "There was an error parsing the body", with the cause chained), or None."""
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"the request body is not valid JSON: not UTF-8 "
            f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        )
    if isinstance(exc, RecursionError):
        return "the request body is not valid JSON: nested too deeply"
    if isinstance(exc, ValueError):
        return f"the request body is not valid JSON: {exc}"
    return None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and (reason := _unreadable_json(exc.__cause__)) is not None:
        return error_response(400, "malformed_json", reason)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(KBQAError, _api_error)
    for kind, _, _ in _DOMAIN_ERRORS:
        app.add_exception_handler(kind, _api_error)
    app.add_exception_handler(Exception, _internal_error)
