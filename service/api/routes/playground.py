"""The playground: a page at `/` to try the models and collections in a browser.

The page and its assets (`service/api/static/`, shipped with the package, no
build step) are public; every API call the page makes is authenticated as
usual, and the page learns whether it must ask for a key from the `data-auth`
attribute this route writes into it. Assets are an allowlist made at import
from the folder's own files, and responses carry a strict Content Security
Policy (docs/api.md, The playground).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from service.api.deps import SettingsDep
from service.errors import NotFound

logger = logging.getLogger(__name__)

router = APIRouter(tags=["playground"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
PAGE = "index.html"
ASSET_PREFIX = "/playground/"
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
AUTH_MARK = "{{AUTH}}"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, tuple[Path, str]]:
    """Every servable asset of the static folder: name → (file, media type)."""
    if not STATIC_DIR.is_dir():
        logger.warning("no playground assets: %s is missing", STATIC_DIR)
        return {}
    return {
        path.name: (path, MEDIA_TYPES[path.suffix])
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


ASSETS = _assets()


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def page(settings: SettingsDep) -> HTMLResponse:
    path = STATIC_DIR / PAGE
    if not path.is_file():
        raise NotFound("the playground is not installed (service/api/static/index.html is missing)")
    auth = "key" if settings.api_key or settings.read_api_key else "none"
    html = path.read_text(encoding="utf-8").replace(AUTH_MARK, auth)
    return HTMLResponse(html, headers=SECURITY_HEADERS)


@router.get(ASSET_PREFIX + "{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        raise NotFound(f"no playground asset '{name[:100]}'")
    path, media_type = found
    return Response(path.read_bytes(), media_type=media_type, headers=SECURITY_HEADERS)
