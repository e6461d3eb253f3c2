"""The one map from exceptions to HTTP statuses, answered as RFC 9457 problem details.

Bodies name fields and limits, never values. A foreign org's name answers exactly like a missing
one because both are the same `NotFoundError` with the same text.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from api.middleware import request_id_of
from api.schemas import Problem
from ledger.errors import (
    AlreadyExistsError,
    AppBrokenError,
    AppRefreshFailedError,
    ConcurrencyError,
    ConflictError,
    CryptoError,
    ExternalSecretError,
    GoneError,
    IdempotencyConflictError,
    IntegrityError,
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    RotationFailedError,
    StaleReadError,
    StoreUnavailableError,
    UnauthenticatedError,
    ValidationError,
    ValueTooLargeError,
)

log = logging.getLogger("keyledger.api")

PROBLEM_JSON = "application/problem+json"

# Order matters: the first matching class wins (subclasses before their bases).
STATUS_BY_ERROR: tuple[tuple[type[LedgerError], int, str], ...] = (
    (ValueTooLargeError, 413, "Value too large"),
    (ValidationError, 422, "Invalid request"),
    (IdempotencyConflictError, 422, "Idempotency key reused"),
    (UnauthenticatedError, 401, "Unauthorized"),
    (PermissionDeniedError, 403, "Forbidden"),
    (NotFoundError, 404, "Not found"),
    (GoneError, 410, "Gone"),
    (AlreadyExistsError, 409, "Conflict"),
    (ConcurrencyError, 409, "Conflict"),
    (AppBrokenError, 409, "Connection broken"),
    (ConflictError, 409, "Conflict"),
    (AppRefreshFailedError, 502, "Token refresh failed"),
    (ExternalSecretError, 502, "External secret manager error"),
    (RotationFailedError, 502, "Rotation failed"),
    (PreconditionFailedError, 412, "Precondition failed"),
    (StoreUnavailableError, 503, "Service unavailable"),
    (StaleReadError, 503, "Service unavailable"),
    (IntegrityError, 500, "Integrity failure"),
    (CryptoError, 500, "Integrity failure"),
)

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
}


def problem_response(
    request: Request[Any, Any, Any] | None,
    status: int,
    detail: str,
    title: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    request_id = request_id_of(request.scope) if request is not None else ""
    body = Problem(
        type=f"https://keyledger.dev/problems/{status}",
        title=title or TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        request_id=request_id,
    )
    out_headers = dict(headers or {})
    if status == 401:
        out_headers.setdefault("WWW-Authenticate", 'Bearer realm="keyledger"')
    if status == 503:
        out_headers.setdefault("Retry-After", "1")
    return Response(msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=out_headers)


def status_for(exc: LedgerError) -> tuple[int, str]:
    """The HTTP status and title of a domain error: the one map."""
    for error_type, status, title in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status, title
    return HTTP_500_INTERNAL_SERVER_ERROR, "Internal error"


def handle_ledger_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, LedgerError)
    status, title = status_for(exc)
    if status >= 500:
        log.error("request %s failed: %s", request.scope.get("state", {}).get("request_id"), type(exc).__name__)
    return problem_response(request, status, str(exc), title)


def handle_http_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = str(exc.detail)
    if isinstance(exc, ValidationException):
        status = 422
        detail = _validation_detail(exc)
    elif status == 400:
        # Litestar answers 400 for a body that is not JSON; to clients that is invalid input like any other.
        status = 422
        lowered = detail.lower()
        if "json" in lowered or "malformed" in lowered or "truncated" in lowered or "decode" in lowered:
            detail = "the request body is not valid JSON"
    headers = {k: v for k, v in (exc.headers or {}).items()}
    return problem_response(request, status, detail, headers=headers)


# Python parameter names that differ from the public (query) names.
PUBLIC_NAMES = {"scope_filter": "scope"}


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra:
        if isinstance(item, dict):
            key = item.get("key")
            message = item.get("message", "invalid")
            source = item.get("source")
            field = "body" if key == "data" else PUBLIC_NAMES.get(str(key), key)
            parts.append(f"{field}: {message}" if source != "body" or key != "data" else f"{message}")
    return "; ".join(parts) or "the request is invalid"


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The message of an unknown exception could carry anything: log only its type, answer generically.
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem_response(request, HTTP_500_INTERNAL_SERVER_ERROR, "an internal error occurred")


def handle_undecodable_body(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # msgspec raises UnicodeDecodeError (not its DecodeError) for invalid UTF-8 inside a JSON string,
    # which Litestar does not turn into a 400 (msgspec#714).
    return problem_response(request, 422, "the request body is not valid JSON (not UTF-8)")


EXCEPTION_HANDLERS = {
    UnicodeDecodeError: handle_undecodable_body,
    LedgerError: handle_ledger_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
