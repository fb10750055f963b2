"""The viewer page, tested the way people use it: in a real browser.

Debian's chromium, driven by Playwright's async API, opens the page of a real livecam server that
runs in this test's event loop. Frames are uploaded over HTTP; the page is watched through what
it shows (its picture, its overlay, its `data-seq`/`data-state`) and the server counts what the
page asks for. Frames are counted by `X-Frame-Seq`, never by timing.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support import PASSWORD, free_port, make_jpeg

import livecam

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 10_000  # the longest any expected change on the page may take

# What chromium logs by itself while the server is away (or answering 503 while it stops).
CONNECTION_ERROR = re.compile(r"Failed to load resource: (net::ERR_CONNECTION_REFUSED|"
                              r"net::ERR_EMPTY_RESPONSE|net::ERR_CONNECTION_RESET|"
                              r"the server responded with a status of 503)")

# Records what the Content-Security-Policy blocked, from the page's first moment on.
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""

# Keeps count of the object URLs the page holds: each picture's URL must be freed when it goes.
BLOB_URL_COUNTER = """
window.__blobUrls = new Set();
const createObjectURL = URL.createObjectURL, revokeObjectURL = URL.revokeObjectURL;
URL.createObjectURL = (object) => {
  const url = createObjectURL.call(URL, object);
  window.__blobUrls.add(url);
  return url;
};
URL.revokeObjectURL = (url) => {
  window.__blobUrls.delete(url);
  revokeObjectURL.call(URL, url);
};
"""

# Makes the page believe its tab went to the background (or came back), as a browser does.
SET_VISIBILITY = """
(hidden) => {
  Object.defineProperty(document, "visibilityState",
                        {value: hidden ? "hidden" : "visible", configurable: true});
  Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


def browser_missing(reason: str) -> None:
    """Skip on a developer's machine; in CI (CI=true) a missing browser is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: browser tests must run)")
    pytest.skip(reason)


class PageServer:
    """The real app on a fixed port of 127.0.0.1, which can stop and come back on that port.

    A middleware added from outside counts the requests that arrive, by path, so a test can
    see what the page asks for.
    """

    def __init__(self, settings: livecam.Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: Counter[str] = Counter()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = livecam.create_app(self.settings)

        @web.middleware
        async def count(request: web.Request, handler):
            self.requests[request.path] += 1
            return await handler(request)

        app.middlewares.append(count)
        self.runner = web.AppRunner(app, shutdown_timeout=2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[PageServer]:
    settings = livecam.Settings(db_path=tmp_path / "livecam.db", password=PASSWORD,
                                persist_interval=0.05)
    page_server = PageServer(settings)
    await page_server.start()
    yield page_server
    await page_server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def chromium_path() -> str:
    if not CHROMIUM.exists():
        browser_missing(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    return str(CHROMIUM)


@pytest.fixture
async def browser(chromium_path):
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        browser_missing("playwright is missing: pip install -r requirements-dev.txt")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


class Watched:
    """A browser tab plus everything it reported: console errors, page errors."""

    def __init__(self, page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error"
                and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    async def seq(self) -> int | None:
        value = await self.page.get_attribute("#viewer", "data-seq")
        return int(value) if value else None

    async def wait_for_seq(self, seq: int) -> None:
        await self.page.wait_for_function(
            "(seq) => document.getElementById('viewer').dataset.seq === String(seq)", arg=seq,
            timeout=WAIT_MS)

    async def wait_for_state(self, *states: str) -> str:
        await self.page.wait_for_function(
            "(states) => states.includes(document.getElementById('viewer').dataset.state)",
            arg=list(states), timeout=WAIT_MS)
        return await self.page.get_attribute("#viewer", "data-state")

    async def csp_violations(self) -> list[str]:
        return await self.page.evaluate("window.__cspViolations")

    async def assert_clean(self, allow_connection_errors: bool = False) -> None:
        errors = [e for e in self.errors
                  if not (allow_connection_errors and CONNECTION_ERROR.search(e))]
        assert errors == [], "the page reported errors"
        assert await self.csp_violations() == [], "the Content-Security-Policy blocked something"


@pytest.fixture
async def open_page(browser):
    contexts = []

    async def open_(url: str, **options) -> Watched:
        context = await browser.new_context(accept_downloads=True, **options)
        contexts.append(context)
        await context.add_init_script(CSP_RECORDER + BLOB_URL_COUNTER)
        page = await context.new_page()
        watched = Watched(page)
        response = await page.goto(url)
        assert response is not None and response.status == 200
        return watched

    yield open_
    for context in contexts:
        await context.close()


async def upload(http: aiohttp.ClientSession, server: PageServer, jpeg: bytes,
                 camera: str | None = None) -> int:
    path = f"/cams/{camera}/upload" if camera else "/upload"
    async with http.post(server.url + path, data=jpeg,
                         headers={"Authorization": f"Bearer {PASSWORD}"}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["seq"]


async def test_page_is_served_with_its_security_headers(server, http):
    async with http.get(server.url + "/") as response:
        assert response.status == 200
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["default-src"] == "'self'"
    assert "blob:" in directives["img-src"].split()
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


async def test_picture_appears_and_follows_every_upload(server, http, open_page):
    first = await upload(http, server, make_jpeg(320, 240, comment=b"frame one"))
    tab = await open_page(server.url + "/", viewport={"width": 1280, "height": 720})
    page = tab.page

    await tab.wait_for_seq(first)
    assert await tab.wait_for_state("live") == "live"
    assert await page.title() == "default · livecam"
    assert await page.text_content(".overlay .name") == "default"
    assert await page.evaluate("document.getElementById('frame').naturalWidth") == 320
    assert await page.is_hidden("#hint")

    for n in range(2, 6):  # each upload shows up, one after another
        seq = await upload(http, server, make_jpeg(320, 240, color=(20 * n, 90, 160)))
        await tab.wait_for_seq(seq)
    assert await page.locator("img").count() == 1  # swapped, not stacked
    assert await page.evaluate("window.__blobUrls.size") == 1  # the others were freed
    assert re.fullmatch(r"\d+(\.\d)? s ago", await page.text_content("#age"))
    assert re.fullmatch(r"\d+\.\d fps", await page.text_content("#fps"))
    assert await page.text_content("#dims") == "320×240"

    # A smaller variant on request: the page asks again for the same frame in that size.
    await page.select_option("#size", "160")
    await page.wait_for_function("() => document.getElementById('frame').naturalWidth === 160",
                                 timeout=WAIT_MS)
    assert await tab.seq() == seq
    await tab.assert_clean()


async def test_waiting_for_camera_until_the_first_frame(server, http, open_page):
    tab = await open_page(server.url + "/")
    page = tab.page

    assert await tab.wait_for_state("waiting") == "waiting"
    assert await page.text_content("#state") == "waiting for camera"
    assert await page.is_visible("#hint")
    assert f"{server.url}/upload" in await page.text_content("#hint")
    assert await page.is_disabled("#save")

    seq = await upload(http, server, make_jpeg(160, 120))
    await tab.wait_for_seq(seq)
    assert await tab.wait_for_state("live") == "live"
    assert await page.is_hidden("#hint")
    await tab.assert_clean()


async def test_offline_while_the_server_is_away_and_back_when_it_returns(
        server, http, open_page):
    seq = await upload(http, server, make_jpeg(160, 120))
    tab = await open_page(server.url + "/")
    await tab.wait_for_seq(seq)

    await server.stop()
    assert await tab.wait_for_state("offline") == "offline"
    assert await tab.page.text_content("#state") == "offline, retrying"
    assert await tab.page.title() == "offline, retrying · default · livecam"

    await server.start()  # same port, same database: the last frame is restored
    assert await tab.wait_for_state("live", "silent") in ("live", "silent")
    newer = await upload(http, server, make_jpeg(160, 120, color=(10, 200, 10)))
    assert newer == seq + 1
    await tab.wait_for_seq(newer)
    assert await tab.wait_for_state("live") == "live"
    await tab.assert_clean(allow_connection_errors=True)


async def test_hidden_tab_makes_no_requests_and_catches_up_when_shown(server, http, open_page):
    seq = await upload(http, server, make_jpeg(160, 120))
    tab = await open_page(server.url + "/")
    page = tab.page
    await tab.wait_for_seq(seq)

    await page.evaluate(SET_VISIBILITY, True)
    assert await tab.wait_for_state("paused") == "paused"
    await asyncio.sleep(0.2)  # a request sent just before the tab hid has arrived by now
    asked = server.requests["/next.jpeg"]
    for _ in range(3):
        seq = await upload(http, server, make_jpeg(160, 120))
    await asyncio.sleep(1.5)  # room for requests that must not come
    assert server.requests["/next.jpeg"] == asked
    assert await tab.seq() == seq - 3

    await page.evaluate(SET_VISIBILITY, False)
    await tab.wait_for_seq(seq)  # the newest frame at once, not each one missed
    assert server.requests["/next.jpeg"] > asked
    await tab.assert_clean()


async def test_save_downloads_the_shown_frame_with_a_timestamped_name(
        server, http, open_page, tmp_path):
    jpeg = make_jpeg(320, 240, comment=b"keep me")
    seq = await upload(http, server, jpeg)
    tab = await open_page(server.url + "/")
    page = tab.page
    await tab.wait_for_seq(seq)

    async with page.expect_download(timeout=WAIT_MS) as clicked:
        await page.click("#save")
    download = await clicked.value
    assert re.fullmatch(r"default-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.jpg",
                        download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert saved.read_bytes() == jpeg

    async with page.expect_download(timeout=WAIT_MS) as pressed:  # the keyboard: s
        await page.keyboard.press("s")
    assert (await pressed.value).suggested_filename == download.suggested_filename

    # No more uploads: the age keeps counting, and the camera is reported silent.
    assert await tab.wait_for_state("silent") == "silent"
    assert re.fullmatch(r"camera silent for \d+ s", await page.text_content("#state"))
    assert re.fullmatch(r"\d+(\.\d)? s ago", await page.text_content("#age"))
    await tab.assert_clean()


async def test_keyboard_f_toggles_fullscreen(server, http, open_page):
    seq = await upload(http, server, make_jpeg(160, 120))
    tab = await open_page(server.url + "/")
    page = tab.page
    await tab.wait_for_seq(seq)

    await page.keyboard.press("f")
    await page.wait_for_function("() => document.fullscreenElement?.id === 'viewer'",
                                 timeout=WAIT_MS)
    assert await page.text_content("#fullscreen .button-text") == "Exit fullscreen"
    await page.keyboard.press("f")
    await page.wait_for_function("() => document.fullscreenElement === null", timeout=WAIT_MS)
    await tab.assert_clean()


async def test_phone_sized_window_has_no_horizontal_scroll(server, http, open_page):
    seq = await upload(http, server, make_jpeg(1280, 720))
    tab = await open_page(server.url + "/", viewport={"width": 360, "height": 740},
                          device_scale_factor=2, is_mobile=True, has_touch=True)
    page = tab.page
    await tab.wait_for_seq(seq)

    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    # Auto size: the smallest variant at least as wide as the screen's pixels (360 * 2).
    assert await page.evaluate("document.getElementById('frame').naturalWidth") == 800
    await tab.assert_clean()


async def test_grid_of_cameras_links_to_each_camera_page(server, http, open_page):
    await upload(http, server, make_jpeg(320, 240, color=(200, 0, 0)))
    porch = await upload(http, server, make_jpeg(320, 240, color=(0, 0, 200)), camera="porch")
    grid = await open_page(server.url + "/")
    page = grid.page

    assert await page.title() == "2 cameras · livecam"
    for name in ("default", "porch"):
        await page.wait_for_function(
            "(name) => document.querySelector(`.tile[data-camera='${name}']`).dataset.seq",
            arg=name, timeout=WAIT_MS)
    await page.click(".tile[data-camera='porch'] a")
    await page.wait_for_url(server.url + "/cams/porch/")

    await grid.wait_for_seq(porch)  # the same tab, now the viewer of porch
    assert await page.text_content(".overlay .name") == "porch"
    assert server.requests["/cams/porch/next.jpeg"] >= 1
    await grid.assert_clean()
