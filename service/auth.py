"""API-key authentication (CPC_API_KEY), as a pure-ASGI middleware.

When a key is set, every HTTP route except the probes (/health, /ready)
requires `Authorization: Bearer <key>`; the key is compared in constant time.
A missing or wrong key gets 401 with `WWW-Authenticate: Bearer`. Without a
key the middleware is not installed at all.
"""

from __future__ import annotations

import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service.handlers import error_response

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready"})


def _authorization(scope: Scope) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            return bytes(value)
    return None


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip() or None


class ApiKeyMiddleware:
    """401 unless the request carries the configured bearer key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("ApiKeyMiddleware needs a non-empty key")
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(_authorization(scope))
        if token is not None and hmac.compare_digest(token, self.key):
            await self.app(scope, receive, send)
            return
        detail = (
            "missing API key: send `Authorization: Bearer <key>`"
            if token is None
            else "wrong API key"
        )
        response = error_response(
            401, detail, {"WWW-Authenticate": "Bearer"}, path=str(scope.get("path", ""))
        )
        await response(scope, receive, send)
