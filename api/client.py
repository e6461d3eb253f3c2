"""A small HTTP client for the CLI: one clear error line per failure, never a value in it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import msgspec


class ClientError(Exception):
    """A failed call, with the exit code the CLI should use."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_BY_STATUS = {401: 5, 403: 5, 404: 3, 409: 4, 412: 4}


class KeyledgerClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        if not self.token:
            raise ClientError("no credentials: set KEYLEDGER_API_KEY (or pass --api-key)", 5)
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        try:
            response = self._http.request(method, path, json=json, params=params, headers=all_headers)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            detail = response.reason_phrase
            try:
                problem = msgspec.json.decode(response.content)
                if isinstance(problem, dict):
                    detail = str(problem.get("detail") or problem.get("title") or detail)
            except msgspec.DecodeError:
                pass
            raise ClientError(f"{detail} (HTTP {response.status_code})", EXIT_BY_STATUS.get(response.status_code, 1))
        if response.status_code == 204 or not response.content:
            return None
        return msgspec.json.decode(response.content)

    @staticmethod
    def secret_path(name: str, suffix: str = "") -> str:
        # Dots too: clients and proxies drop '.' and '..' path segments before they reach the server.
        return f"/v1/secrets/{quote(name, safe='').replace('.', '%2E')}{suffix}"
