"""API-key authentication (CPC_API_KEY, CPC_READ_API_KEY), as a pure-ASGI middleware.

When a key is set, every HTTP route except the probes (/health, /ready) and
the playground's page and static assets (`/`, `/playground/<file>`: code, no
data; see `service.api.routes.playground`) requires `Authorization: Bearer
<key>`; keys are compared in constant time and never logged. A missing or
wrong key gets 401 with `WWW-Authenticate: Bearer`. The read-only key
(CPC_READ_API_KEY) may read: GET, HEAD and OPTIONS anywhere, and POST to
/embed, /v1/embeddings and /search, which change nothing; any other request
with it (creating or deleting collections, upserting or deleting items, and
any unknown route) is 403. Without either key the middleware is not installed at all.
"""

from __future__ import annotations

import hmac
import logging
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.error_handlers import error_response
from service.errors import Forbidden

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/"})
OPEN_ASSET = re.compile(r"/playground/[A-Za-z0-9_-]+\.(?:js|css|svg)")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_POSTS = frozenset({"/embed", "/v1/embeddings", "/search"})


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


def is_read(method: str, path: str) -> bool:
    """Whether a request only reads: what the read-only key may do."""
    return method in READ_METHODS or (method == "POST" and path.rstrip("/") in READ_POSTS)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or OPEN_ASSET.fullmatch(path) is not None


def _matches(token: bytes, key: bytes | None) -> bool:
    # compare_digest runs in time independent of where the bytes differ
    return key is not None and hmac.compare_digest(token, key)


def key_bytes(key: str | None) -> bytes | None:
    return key.encode("utf-8") if key else None


def grants(scope: Scope, key: bytes | None, read_key: bytes | None) -> bool:
    """Whether the request's bearer token lets it through: the full key, or the read-only
    key for a request that only reads."""
    token = bearer_token(_authorization(scope))
    if token is None:
        return False
    path = str(scope.get("path", ""))
    method = str(scope.get("method", "GET")).upper()
    return _matches(token, key) or (_matches(token, read_key) and is_read(method, path))


class ApiKeyMiddleware:
    """401 unless the request carries a configured bearer key; 403 for a write with the
    read-only one."""

    def __init__(
        self, app: ASGIApp, api_key: str | None = None, read_api_key: str | None = None
    ) -> None:
        if not api_key and not read_api_key:
            raise ValueError("ApiKeyMiddleware needs a non-empty key")
        self.app = app
        self.key = key_bytes(api_key)
        self.read_key = key_bytes(read_api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or _is_open(str(scope.get("path", "")))
            or grants(scope, self.key, self.read_key)
        ):
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        method = str(scope.get("method", "GET")).upper()
        token = bearer_token(_authorization(scope))
        if token is not None and _matches(token, self.read_key):
            denied = Forbidden(
                f"the read-only API key (CPC_READ_API_KEY) cannot {method} {path[:200]}: "
                "it may embed, search and read; writes need the full key (CPC_API_KEY)"
            )
            await error_response(denied.status_code, denied.detail, path=path)(scope, receive, send)
            return
        detail = (
            "missing API key: send `Authorization: Bearer <key>`"
            if token is None
            else "wrong API key"
        )
        response = error_response(401, detail, {"WWW-Authenticate": "Bearer"}, path=path)
        await response(scope, receive, send)
