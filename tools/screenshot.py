"""Make docs/screenshot.png: the viewer page following the demo camera, as a browser shows it.

    python tools/screenshot.py [--out docs/screenshot.png] [--url http://host:port/]

Without --url it starts `livecam.py --demo` on a free port of 127.0.0.1 with a throwaway
database, waits until the page shows a few live frames, saves a 1280x720 screenshot and stops
the server. Needs Debian's chromium (`apt-get install -y chromium`) and the playwright package;
it never downloads a browser.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FRAMES_BEFORE_SHOT = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def demo_server() -> Iterator[str]:
    """`livecam.py --demo` on a free port with a temporary database; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="livecam-shot-") as tmp:
        env = {**os.environ, "LIVECAM_PASSWORD": secrets.token_urlsafe(24)}
        command = [sys.executable, str(ROOT / "livecam.py"), "--demo", "--host", "127.0.0.1",
                   "--port", str(port), "--db", str(Path(tmp) / "livecam.db"),
                   "--no-access-log"]
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                      cwd=ROOT)
        try:
            wait_ready(url, server, log)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_ready(url: str, server: subprocess.Popen, log: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"livecam.py exited early:\n{log.read_text(errors='replace')}")
        # An http:// URL this script made itself.
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "status", timeout=1):  # noqa: S310
            return
        time.sleep(0.1)
    sys.exit(f"livecam.py did not answer within {seconds} s")


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url)
            page.wait_for_function(
                "(n) => Number(document.getElementById('viewer').dataset.seq) >= n",
                arg=FRAMES_BEFORE_SHOT, timeout=30_000)
            first = int(page.get_attribute("#viewer", "data-seq"))
            # The demo camera speeds up once it has a viewer: let the fps reading settle.
            page.wait_for_function(
                "(n) => Number(document.getElementById('viewer').dataset.seq) >= n",
                arg=first + 60, timeout=30_000)
            page.mouse.move(640, 360)  # the controls show while the pointer moves
            page.wait_for_function(
                "() => !document.getElementById('viewer').classList.contains('idle')"
                " && document.getElementById('viewer').dataset.state === 'live'")
            page.wait_for_timeout(600)  # the controls' fade-in
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png",
                        help="where to write the PNG (default: docs/screenshot.png)")
    parser.add_argument("--url", help="photograph this running server instead of a demo one")
    args = parser.parse_args()
    if args.url:
        shoot(args.url.rstrip("/") + "/", args.out)
    else:
        with demo_server() as url:
            shoot(url, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
