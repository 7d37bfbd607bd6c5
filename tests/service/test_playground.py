"""The playground in a real browser: Debian's chromium driven by Playwright against the real
app (lifespan, onnxruntime with the tiny bundles, FAISS, SQLite) on a live server.

Every page records its console errors and uncaught exceptions, and a test fails on any that
it did not provoke on purpose. Screenshots at 1440 px and 375 px go to `test-artifacts/`.
One browser serves the whole module; each test opens its own context (fresh session storage).
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from tests.service.conftest import audio_bytes, image_bytes
from tests.service.live import REPO, app_in_thread

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "the browser tests need Debian's chromium at /usr/bin/chromium "
        "(`.ci/run` installs it: apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need playwright (the `dev` extra)"
)
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect

ARTIFACTS = REPO / "test-artifacts"
KEY = "playground-test-key"
WIDE, NARROW = 1440, 375
NETWORK_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
TEXT = "The cat sat on the mat. Then it slept all day. The dog barked at the door."


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",  # grant the microphone without asking
                "--use-fake-device-for-media-stream",  # a synthetic microphone (a beep)
            ],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(models_dir=models_dir, data_dir=tmp_path_factory.mktemp("data"))
    with app_in_thread(settings) as host:
        yield f"http://{host}"


@pytest.fixture(scope="module")
def keyed_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        models_dir=models_dir, data_dir=tmp_path_factory.mktemp("data"), api_key=KEY
    )
    with app_in_thread(settings) as host:
        yield f"http://{host}"


@dataclass
class Watched:
    """A page and the console errors and uncaught exceptions it produced."""

    page: Page
    errors: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)

    def unexpected(self) -> list[str]:
        """Errors other than the browser's log line of an HTTP status a test provoked."""
        out = []
        for text in self.errors:
            match = NETWORK_ERROR.search(text)
            if match is None or int(match[1]) not in self.allowed_statuses:
                out.append(text)
        return out


OpenPage = Callable[..., Watched]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """`open_page(url, width)`: a page in a fresh context, loaded; fails the test on errors."""
    opened: list[tuple[Any, Watched]] = []

    def open_(url: str, width: int = WIDE) -> Watched:
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        watched = Watched(page)
        page.on(
            "console",
            lambda msg: watched.errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: watched.errors.append(f"uncaught: {exc}"))
        opened.append((context, watched))
        page.goto(url)
        return watched

    yield open_
    problems = [text for _, watched in opened for text in watched.unexpected()]
    for context, _ in opened:
        context.close()
    assert problems == [], f"console errors on the page: {problems}"


# -- helpers --------------------------------------------------------------------------------


def ready(page: Page) -> None:
    expect(page.locator("#collection")).to_be_enabled()


def choose(page: Page, collection: str) -> None:
    page.select_option("#collection", collection)
    expect(page.locator("#collection-info")).to_contain_text(f"Model {collection}")


def upload(page: Page, name: str, data: bytes, mime: str) -> None:
    page.check('input[name="kind"][value="file"]')
    page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])


def add(page: Page, item_id: str, metadata: dict[str, Any]) -> None:
    page.fill("#item-id", item_id)
    page.fill("#metadata", json.dumps(metadata))
    page.click("#add")
    expect(page.locator("#status")).to_contain_text(f"Added {item_id}")


def search(page: Page) -> None:
    page.click("#search")
    expect(page.locator("#status")).to_contain_text("Found")


def top_result(page: Page) -> Any:
    return page.locator("#results li.result").first


def focused_matches(page: Page, selector: str) -> bool:
    return bool(page.evaluate("s => document.activeElement.matches(s)", selector))


def tab_to(page: Page, selector: str, most: int = 40) -> None:
    """Press Tab until `selector` has the focus (it must be reachable by keyboard)."""
    for _ in range(most):
        if focused_matches(page, selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} was not reached with {most} presses of Tab")


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page is {width} px wide"


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# -- tests ----------------------------------------------------------------------------------


def test_add_and_search_audio_image_and_text(open_page: OpenPage, server: str) -> None:
    page = open_page(server + "/").page
    ready(page)

    choose(page, "audio")
    upload(page, "tone.wav", audio_bytes(seconds=1.0, freq=330.0), "audio/wav")
    add(page, "tone-330", {"pitch": 330})
    upload(page, "other.wav", audio_bytes(seconds=0.6, freq=880.0), "audio/wav")
    add(page, "tone-880", {"pitch": 880})
    upload(page, "tone.wav", audio_bytes(seconds=1.0, freq=330.0), "audio/wav")
    search(page)
    expect(top_result(page).locator(".result-id")).to_have_text("tone-330")
    expect(top_result(page).locator(".score")).to_have_text("score 1.000")
    expect(top_result(page).locator(".metadata")).to_have_text('{"pitch":330}')
    expect(page.locator("#results li.result")).to_have_count(2)
    expect(top_result(page).locator("audio")).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator("#heatmap-caption")).to_contain_text("steps of")
    found = re.search(r"gave (\d+) steps", page.inner_text("#status"))
    assert found is not None
    steps = int(found[1])
    assert page.evaluate("document.getElementById('heatmap').width") == steps
    assert page.evaluate("document.getElementById('heatmap').height") == 16  # tiny dims
    expect(page.locator("#map circle.point")).to_have_count(2)
    expect(page.locator("#map polygon.query")).to_have_count(1)
    expect(page.locator("#map circle.near")).to_have_count(2)

    choose(page, "image")
    upload(page, "stripes.png", image_bytes(width=120, height=90, seed=4), "image/png")
    add(page, "stripes", {"kind": "stripes"})
    search(page)
    expect(top_result(page).locator(".result-id")).to_have_text("stripes")
    thumb = top_result(page).locator("img.thumb")
    expect(thumb).to_have_attribute("alt", "thumbnail of stripes")
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("img => img.naturalWidth") == 120  # below 128 px: kept as is
    expect(page.locator("#heatmap-caption")).to_contain_text("patch grid")
    assert page.evaluate("document.getElementById('heatmap').className") == "grid"

    choose(page, "text")
    page.fill("#text", TEXT)
    add(page, "cat-note", {"topic": "pets"})
    search(page)
    expect(top_result(page).locator(".result-id")).to_have_text("cat-note")
    expect(top_result(page).locator(".snippet")).to_have_text(TEXT)
    expect(page.locator("#sentences li")).to_have_count(3)
    expect(page.locator("#sentences li").first).to_have_text("The cat sat on the mat.")
    expect(page.locator("#heatmap")).to_have_attribute("aria-label", re.compile("^3 sentences"))
    expect(page.locator("#error")).to_be_hidden()
    no_horizontal_scroll(page)
    screenshot(page, "playground-1440.png")


def test_a_stats_collection_is_searched_with_its_pooling(open_page: OpenPage, server: str) -> None:
    request = urllib.request.Request(
        server + "/collections/voices",
        data=json.dumps({"model": "audio", "pooling": "stats"}).encode(),
        headers={"content-type": "application/json"},
        method="PUT",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
    page = open_page(server + "/").page
    ready(page)
    page.select_option("#collection", "voices")
    expect(page.locator("#collection-info")).to_contain_text("stats pooling, 32 dimensions")
    upload(page, "low.wav", audio_bytes(seconds=0.9, freq=250.0), "audio/wav")
    add(page, "low", {})
    upload(page, "high.wav", audio_bytes(seconds=0.5, freq=1400.0), "audio/wav")
    add(page, "high", {})
    upload(page, "low.wav", audio_bytes(seconds=0.9, freq=250.0), "audio/wav")
    search(page)
    expect(top_result(page).locator(".result-id")).to_have_text("low")
    expect(top_result(page).locator(".score")).to_have_text("score 1.000")
    expect(page.locator("#map polygon.query")).to_have_count(1)


def test_a_phone_width_page_is_usable(open_page: OpenPage, server: str) -> None:
    page = open_page(server + "/", width=NARROW).page
    ready(page)
    choose(page, "text")
    page.fill("#text", "Birds sing at dawn. The river runs.")
    add(page, "birds", {"topic": "nature"})
    search(page)
    expect(top_result(page).locator(".result-id")).to_have_text("birds")
    no_horizontal_scroll(page)
    for selector in ("#collection", "#text", "#k", "#search", "#item-id", "#metadata", "#add"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= NARROW, selector
    heatmap = page.locator("#heatmap").bounding_box()
    assert heatmap is not None and heatmap["width"] > 250  # the picture uses the width
    screenshot(page, "playground-375.png")


def test_the_keyboard_alone_searches_and_adds(open_page: OpenPage, server: str) -> None:
    page = open_page(server + "/").page
    ready(page)
    page.keyboard.press("Tab")
    assert focused_matches(page, "a.skip")  # the first stop skips to the input
    page.keyboard.press("Enter")
    tab_to(page, "#collection")
    page.keyboard.type("text")  # type-ahead picks the option
    expect(page.locator("#collection-info")).to_contain_text("Model text")
    page.keyboard.press("Tab")
    assert focused_matches(page, 'input[name="kind"][value="text"]')  # chosen for text
    page.keyboard.press("ArrowLeft")  # arrows move between the kinds
    expect(page.locator("#mic-input")).to_be_visible()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#text-input")).to_be_visible()
    tab_to(page, "#text")
    page.keyboard.type("Snow falls on the hills. The fire is warm.")
    tab_to(page, "#search")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"  # focus is visible
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("Found")
    expect(page.locator("#heatmap-caption")).to_contain_text("2 sentences")
    assert focused_matches(page, "#search")  # the focus stays where the user was

    tab_to(page, "#item-id")
    page.keyboard.press("Control+A")
    page.keyboard.type("snow")
    tab_to(page, "#metadata")
    page.keyboard.press("Control+A")
    page.keyboard.type('{"season": "winter"}')
    tab_to(page, "#add")
    page.keyboard.press("Space")
    expect(page.locator("#status")).to_contain_text("Added snow to text")
    tab_to(page, "#search")
    page.keyboard.press("Enter")
    expect(top_result(page).locator(".result-id")).to_have_text("snow")
    expect(top_result(page).locator(".metadata")).to_have_text('{"season":"winter"}')


def test_a_recording_from_the_microphone_is_embedded(open_page: OpenPage, server: str) -> None:
    page = open_page(server + "/").page
    ready(page)
    choose(page, "audio")
    page.check('input[name="kind"][value="mic"]')
    page.click("#record")
    expect(page.locator("#record")).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(800)  # let the fake microphone deliver some sound
    page.click("#record")
    expect(page.locator("#record-state")).to_contain_text("Recorded")
    expect(page.locator("#mic-preview audio")).to_have_count(1)
    search(page)
    expect(page.locator("#heatmap-caption")).to_contain_text("steps of")
    add(page, "from-the-mic", {"source": "microphone"})


def test_the_page_asks_for_the_api_key_once_and_sends_it(
    open_page: OpenPage, keyed_server: str
) -> None:
    watched = open_page(keyed_server + "/")
    page = watched.page
    expect(page.locator("#key-panel")).to_be_visible()
    assert focused_matches(page, "#key-input")
    api_calls: list[Any] = []
    page.on("request", lambda req: api_calls.append(req) if "/playground/" not in req.url else None)
    page.keyboard.type(KEY)
    page.keyboard.press("Enter")
    ready(page)
    expect(page.locator("#key-panel")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('cpc-embed.api-key')") == KEY
    choose(page, "text")
    page.fill("#text", "Keys open doors.")
    search(page)
    assert {req.url.split("/", 3)[3].split("?")[0] for req in api_calls} >= {
        "models",
        "collections",
        "embed",
        "search",
        "collections/text/map",
    }
    for req in api_calls:
        assert req.headers.get("authorization") == f"Bearer {KEY}", req.url

    page.reload()  # the same tab: not asked again
    ready(page)
    expect(page.locator("#key-panel")).to_be_hidden()


def test_errors_are_shown_in_words(open_page: OpenPage, server: str, keyed_server: str) -> None:
    watched = open_page(server + "/")
    page = watched.page
    ready(page)
    choose(page, "image")
    upload(page, "sound.wav", audio_bytes(), "audio/wav")
    watched.allowed_statuses.add(415)
    page.click("#search")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("The service answered 415")
    expect(error).to_contain_text("is audio data, but model 'image' takes image")
    assert error.get_attribute("role") == "alert"

    page.fill("#item-id", "x")
    page.fill("#metadata", "[1, 2]")
    page.click("#add")
    expect(error).to_have_text('The metadata must be a JSON object, such as {"speaker": "m3"}.')

    keyed = open_page(keyed_server + "/")
    keyed.allowed_statuses.add(401)
    keyed.page.fill("#key-input", "not-the-key")
    keyed.page.press("#key-input", "Enter")
    expect(keyed.page.locator("#key-error")).to_contain_text("wrong API key")
    expect(keyed.page.locator("#key-panel")).to_be_visible()
    assert keyed.page.evaluate("sessionStorage.getItem('cpc-embed.api-key')") is None
