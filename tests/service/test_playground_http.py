"""The playground's page and assets over HTTP: what is served, with which headers, what is
public with an API key set, and that every file the page refers to exists."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.api.routes.playground import ASSETS, STATIC_DIR
from tests.service.conftest import MakeClient


def test_the_page_is_served_at_the_root(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<html lang="en" data-auth="none">' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # not part of the API


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
        ("recorder-worklet.js", "text/javascript"),
    ],
)
def test_assets_are_served_with_their_types(client: TestClient, name: str, media_type: str) -> None:
    r = client.get(f"/playground/{name}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
    assert r.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    ["/playground/nope.js", "/playground/index.html", "/playground/..%2Fconfig.py", "/playground/"],
)
def test_nothing_else_is_served(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404 and "detail" in r.json()


def test_every_file_the_page_refers_to_exists() -> None:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    referenced = set(re.findall(r'(?:src|href)="/playground/([^"]+)"', html))
    assert {"app.js", "style.css", "favicon.svg"} <= referenced
    for module in (p for p in STATIC_DIR.glob("*.js")):
        referenced |= set(re.findall(r'from "\./([^"]+)"', module.read_text(encoding="utf-8")))
        referenced |= set(re.findall(r'"/playground/([^"]+)"', module.read_text(encoding="utf-8")))
    assert referenced <= set(ASSETS), referenced - set(ASSETS)


def test_with_a_key_the_page_is_public_and_the_api_is_not(make_client: MakeClient) -> None:
    c = make_client(api_key="k", read_api_key="r")
    r = c.get("/")
    assert r.status_code == 200 and 'data-auth="key"' in r.text
    assert c.get("/playground/app.js").status_code == 200
    assert c.get("/playground/nope.js").status_code == 404  # public, but still nothing there
    for path in ("/collections", "/collections/text/map", "/collections/text/originals/a"):
        assert c.get(path).status_code == 401, path
    assert c.get("/playground/../collections").status_code in (401, 404)
    read = {"Authorization": "Bearer r"}
    assert c.get("/collections/text/map", headers=read).status_code == 200
    assert c.get("/collections/text/originals/a", headers=read).status_code == 404
