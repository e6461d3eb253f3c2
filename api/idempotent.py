"""Running a POST command once per `Idempotency-Key`: the first answer is stored with its events."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

import msgspec
from litestar import Request, Response

from api.errors import PROBLEM_JSON, status_for
from api.middleware import request_id_of
from api.schemas import Problem
from ledger.errors import LedgerError
from ledger.idempotency import StoredAnswer
from ledger.service import Ledger
from ledger.writer import Command

T = TypeVar("T")
R = TypeVar("R")

IDEMPOTENCY_HEADER = "idempotency-key"


def json_answer(status: int, body: object, headers: dict[str, str] | None = None) -> StoredAnswer:
    return StoredAnswer(status=status, headers=headers or {}, body=msgspec.json.encode(body))


def problem_answer(request: Request[Any, Any, Any], error: LedgerError) -> StoredAnswer:
    status, title = status_for(error)
    problem = Problem(
        type=f"https://keyledger.dev/problems/{status}",
        title=title,
        status=status,
        detail=str(error),
        request_id=request_id_of(request.scope),
    )
    return StoredAnswer(status=status, headers={"content-type": PROBLEM_JSON}, body=msgspec.json.encode(problem))


async def run_command(
    request: Request[Any, Any, Any],
    ledger: Ledger,
    command: Command[T],
    scope: str,
    render: Callable[[T], StoredAnswer],
) -> Response[Any]:
    """Submit `command`; with an Idempotency-Key, at most once per (scope, key) within the TTL.

    `scope` names the caller (org and key id, or the admin token): keys are never shared between callers.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        result = await ledger.submit(command)
        return to_response(render(result))
    body = await request.body()
    # The caller's key is part of `scope` (a replay never skips a permission check), and If-Match is
    # part of the request: a retry must be the same request by the same caller.
    if_match = request.headers.get("if-match", "")
    fingerprint = hashlib.sha256(
        b"\0".join((request.method.encode(), request.url.path.encode(), if_match.encode(), body))
    ).hexdigest()

    def render_any(result: object, error: LedgerError | None) -> StoredAnswer:
        if error is not None:
            return problem_answer(request, error)
        return render(cast(T, result))

    answer = await ledger.submit_idempotent(command, scope, key, fingerprint, render_any)  # type: ignore[arg-type]
    response = to_response(answer.answer)
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def to_response(answer: StoredAnswer) -> Response[Any]:
    headers = dict(answer.headers)
    media_type = headers.pop("content-type", "application/json")
    return Response(answer.body, status_code=answer.status, headers=headers, media_type=media_type)
