"""OpenAPI response documentation shared by the routes."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from api.schemas import Problem

_DESCRIPTIONS = {
    401: "Missing, malformed, unknown or revoked credentials",
    403: "The key's role or scope does not allow this",
    404: "No such thing in the caller's org",
    409: "Conflict with the current state",
    412: "If-Match does not match the current version",
    410: "The secret expired: the denied reveal was recorded",
    413: "Request body or value too large",
    422: "Invalid input; the detail names the field",
    429: "Too many requests",
    502: "An external service (a rotation webhook, an external secret manager) failed; the failure was recorded",
    503: "The ledger could not record the action; nothing was done",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=Problem, description=_DESCRIPTIONS[status], media_type="application/problem+json"
        )
        for status in statuses
    }


COMMON = (401, 413, 422, 429, 503)
