"""The edge: deploy/varnish.vcl and deploy/nginx-tls.conf in front of a real livecam.

A real `python livecam.py`, a real `varnishd -F` in front of it and nginx with a throwaway
certificate in front of that; viewers are real HTTP clients. Varnish counts the requests it
sends to livecam (`varnishstat`: MAIN.backend_req), so "one origin request per frame" is
read from the cache itself. The camera uploads straight to livecam, as in production, so
its uploads are not in that count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from support import PASSWORD, ROOT, ServerProcess, free_port, make_jpeg

SYSTEM_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
IN_CI = os.environ.get("CI") == "true"
AUTH = {"Authorization": f"Bearer {PASSWORD}"}


def system_tool(name: str) -> str:
    """The path of a system program; the test is skipped without it, except in CI."""
    path = shutil.which(name, path=SYSTEM_PATH)
    if path is None:
        message = f"{name} is not installed (Debian: apt install varnish nginx openssl)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for_http(port: int, path: str, process: subprocess.Popen, log: Path,
                  *, tls: ssl.SSLContext | None = None, seconds: float = 20.0) -> None:
    """Poll until `path` answers 200, or fail with the program's log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early:\n{log.read_text()}")
        if tls is None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        else:
            connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=tls)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{process.args[0]} did not answer within {seconds} s:\n{log.read_text()}")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def substitute(text: str, old: str, new: str) -> str:
    """Replace a line of a deploy file that must be there, so the test breaks if it moves."""
    assert old in text, f"expected {old!r} in the deploy file"
    return text.replace(old, new)


# ---------------------------------------------------------------------------
# The programs: livecam, Varnish, nginx
# ---------------------------------------------------------------------------


@dataclass
class Varnish:
    """A `varnishd -F` with its own working directory, serving deploy/varnish.vcl."""

    workdir: Path
    url: str
    process: subprocess.Popen

    def counters(self) -> dict[str, int]:
        out = subprocess.run(
            [system_tool("varnishstat"), "-n", str(self.workdir), "-1", "-j"],
            capture_output=True, check=True, timeout=10).stdout
        data = json.loads(out)
        counters = data.get("counters", data)  # 7.x nests them; 6.x did not
        return {name: c["value"] for name, c in counters.items() if isinstance(c, dict)}

    def origin_requests(self) -> int:
        return self.counters()["MAIN.backend_req"]


@pytest.fixture(scope="module")
def livecam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("edge-livecam") / "livecam.db"
    with ServerProcess(db, "--no-access-log") as server:
        yield server
        server.stop()


@contextlib.contextmanager
def running_varnish(origin: ServerProcess, home: Path) -> Iterator[Varnish]:
    """`varnishd -F` on a loopback port with deploy/varnish.vcl, its backend `origin`."""
    varnishd = system_tool("varnishd")
    system_tool("varnishstat")
    home.mkdir(exist_ok=True)
    vcl = (ROOT / "deploy" / "varnish.vcl").read_text()
    vcl = substitute(vcl, '.port = "8080";', f'.port = "{origin.port}";')
    (home / "livecam.vcl").write_text(vcl)
    port = free_port()
    log = home / "varnishd.log"
    command = [varnishd, "-F", "-n", str(home / "work"), "-a", f"127.0.0.1:{port}",
               "-f", str(home / "livecam.vcl"), "-s", "malloc,64m", "-T", "none",
               # No privilege separation: pytest's tmp dirs are private to this user.
               "-j", "none"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(port, "/status", process, log)
        yield Varnish(home / "work", f"http://127.0.0.1:{port}", process)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def varnish(livecam: ServerProcess,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Varnish]:
    with running_varnish(livecam, tmp_path_factory.mktemp("edge-varnish")) as edge:
        yield edge


@dataclass
class TlsFront:
    url: str
    redirect_url: str
    certificate: Path
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def tls_front(varnish: Varnish, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFront]:
    """nginx with deploy/nginx-tls.conf and a self-signed certificate made for this run."""
    nginx = system_tool("nginx")
    openssl = system_tool("openssl")
    home = tmp_path_factory.mktemp("edge-nginx")
    cert, key = home / "cert.pem", home / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    https_port, http_port = free_port(), free_port()
    varnish_port = varnish.url.rsplit(":", 1)[1]
    site = (ROOT / "deploy" / "nginx-tls.conf").read_text()
    site = substitute(site, "server 127.0.0.1:6081;", f"server 127.0.0.1:{varnish_port};")
    site = substitute(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    site = substitute(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
    site = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", site)
    site = substitute(site, "/etc/ssl/livecam/fullchain.pem", str(cert))
    site = substitute(site, "/etc/ssl/livecam/privkey.pem", str(key))
    (home / "livecam.conf").write_text(site)
    temp_paths = "\n".join(f"    {kind}_temp_path {home}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (home / "nginx.conf").write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
error_log {home}/error.log warn;
pid {home}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temp_paths}
    include {home}/livecam.conf;
}}
""")
    log = home / "error.log"
    log.touch()
    process = subprocess.Popen([nginx, "-p", str(home), "-c", str(home / "nginx.conf"),
                                "-e", str(log), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        wait_for_http(https_port, "/status", process, log, tls=context)
        yield TlsFront(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}",
                       cert, context)
    finally:
        stop(process, signal.SIGQUIT)


# ---------------------------------------------------------------------------
# Camera and viewers
# ---------------------------------------------------------------------------

FRAME = make_jpeg(320, 240)


async def upload(session: aiohttp.ClientSession, base: str, camera: str = "") -> int:
    prefix = f"/cams/{camera}" if camera else ""
    async with session.post(f"{base}{prefix}/upload", data=FRAME, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["seq"]


@dataclass
class Audience:
    """Viewers following one camera's long-poll through the edge, as the page does."""

    url: str
    size: int
    timeout: float = 10.0
    seen: dict[int, list[int]] = field(default_factory=lambda: collections.defaultdict(list))
    timeouts: collections.Counter = field(default_factory=collections.Counter)
    delivered: collections.Counter = field(default_factory=collections.Counter)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def follow(self, session: aiohttp.ClientSession, viewer: int, after: int,
                     until: int) -> None:
        while after < until:
            url = f"{self.url}?after={after}&timeout={self.timeout:g}"
            async with session.get(url) as response:
                body = await response.read()
            if response.status == 204:
                self.timeouts[viewer] += 1
                continue
            assert response.status == 200, body[:200]
            assert body == FRAME
            after = int(response.headers["X-Frame-Seq"])
            self.seen[viewer].append(after)
            async with self.changed:
                self.delivered[after] += 1
                self.changed.notify_all()

    async def all_have(self, seq: int, seconds: float = 15.0) -> None:
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: self.delivered[seq] == self.size)


@contextlib.asynccontextmanager
async def watching(audience: Audience, after: int, until: int):
    """`audience.size` viewers, each with its own connection, following from `after`."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=90)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(audience.follow(session, viewer, after, until))
                 for viewer in range(audience.size)]
        try:
            yield
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


async def test_frames_arrive_through_varnish_and_repeat_askers_share_one_copy(
        livecam: ServerProcess, varnish: Varnish) -> None:
    async with aiohttp.ClientSession() as session:
        seq = await upload(session, livecam.url)
        url = f"{varnish.url}/next.jpeg?after={seq - 1}&timeout=5"
        before = varnish.origin_requests()
        async with session.get(url) as first:
            assert first.status == 200
            assert first.headers["Content-Type"] == "image/jpeg"
            assert await first.read() == FRAME
            assert first.headers["X-Frame-Seq"] == str(seq)
            assert first.headers["Cache-Control"] == "public, max-age=0, s-maxage=2"
            assert first.headers["X-Cache"] == "miss"
        # The same question, asked with a cookie, a password and its parameters in another
        # order, is the same key: answered by Varnish with the same frame.
        same_key = f"{varnish.url}/next.jpeg?timeout=5&after={seq - 1}"
        async with session.get(same_key, headers={"Cookie": "a=b", **AUTH}) as again:
            assert again.status == 200
            assert again.headers["X-Cache"] == "hit"
            assert again.headers["X-Frame-Seq"] == str(seq)
            assert again.headers["ETag"] == first.headers["ETag"]
            assert int(again.headers["X-Frame-Age"]) >= int(first.headers["X-Frame-Age"])
        assert varnish.origin_requests() - before == 1


async def test_a_hundred_viewers_cost_about_one_origin_request_per_frame(
        livecam: ServerProcess, varnish: Varnish) -> None:
    frames = 20
    async with aiohttp.ClientSession() as camera:
        start = await upload(camera, livecam.url)
        audience = Audience(f"{varnish.url}/next.jpeg", size=100)
        before = varnish.counters()
        async with watching(audience, after=start, until=start + frames):
            for _ in range(frames):
                seq = await upload(camera, livecam.url)
                await audience.all_have(seq)
        after = varnish.counters()

    wanted = list(range(start + 1, start + frames + 1))
    assert all(audience.seen[viewer] == wanted for viewer in range(audience.size))
    origin = after["MAIN.backend_req"] - before["MAIN.backend_req"]
    print(f"\n{audience.size} viewers x {frames} frames through Varnish: "
          f"{origin} origin requests, "
          f"{after['MAIN.cache_hit'] - before['MAIN.cache_hit']} cache hits, "
          f"{after['MAIN.busy_sleep'] - before['MAIN.busy_sleep']} waits on the waiting list")
    assert origin <= frames + 2
    assert after["MAIN.busy_sleep"] > before["MAIN.busy_sleep"]  # coalesced, not only cached
    assert after["MAIN.cache_hitmiss"] == before["MAIN.cache_hitmiss"]
    assert after["MAIN.cache_hitpass"] == before["MAIN.cache_hitpass"]


async def test_a_camera_stall_longer_than_the_long_poll_does_not_break_the_collapse(
        livecam: ServerProcess, varnish: Varnish) -> None:
    """Every viewer gets its 204 when its long-poll times out, asks again, and the askers are
    coalesced again: the 204 (no-store) must not make the key hit-for-miss, which would send
    every viewer to livecam on its own until a frame arrives."""
    viewers, timeout, stall, frames = 40, 2.0, 6.0, 5
    async with aiohttp.ClientSession() as camera:
        start = await upload(camera, livecam.url, camera="stall")
        audience = Audience(f"{varnish.url}/cams/stall/next.jpeg", size=viewers, timeout=timeout)
        async with watching(audience, after=start, until=start + frames):
            await asyncio.sleep(0.5)  # everyone is waiting for the next frame
            before_stall = varnish.counters()
            await asyncio.sleep(stall)
            after_stall = varnish.counters()
            for _ in range(frames):
                seq = await upload(camera, livecam.url, camera="stall")
                await audience.all_have(seq)
        after = varnish.counters()

    during_stall = after_stall["MAIN.backend_req"] - before_stall["MAIN.backend_req"]
    resumed = after["MAIN.backend_req"] - after_stall["MAIN.backend_req"]
    print(f"\n{viewers} viewers, {stall:g} s stall with timeout={timeout:g}: "
          f"{during_stall} origin requests during the stall, {resumed} for {frames} frames "
          f"after it, {sum(audience.timeouts.values())} timeouts (204) delivered")
    # Uncoalesced, each timeout would cost `viewers` requests (120 here), and the first frame
    # after the stall 40 more.
    assert during_stall <= stall / timeout + 2
    assert resumed <= frames + 2
    wanted = list(range(start + 1, start + frames + 1))
    assert all(audience.seen[viewer] == wanted for viewer in range(viewers))
    # Viewers are answered when the long-poll they asked for times out, not held longer:
    # two timeouts each at least (at about 2 s and 4 s) before the camera resumes at 6.5 s.
    assert all(audience.timeouts[viewer] >= 2 for viewer in range(viewers))
    assert after["MAIN.cache_hitmiss"] == before_stall["MAIN.cache_hitmiss"]


async def test_a_timed_out_long_poll_is_stored_for_nobody_who_asks_later(
        livecam: ServerProcess, varnish: Varnish) -> None:
    async with aiohttp.ClientSession() as session:
        seq = await upload(session, livecam.url, camera="quiet")
        url = f"{varnish.url}/cams/quiet/next.jpeg?after={seq}&timeout=0.5"
        for _ in range(2):
            async with session.get(url) as response:
                assert response.status == 204
                assert response.headers["Cache-Control"] == "no-store"
                assert response.headers["X-Cache"] == "miss"  # a new long-poll each time
            await asyncio.sleep(0.05)
        newer = await upload(session, livecam.url, camera="quiet")
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["X-Frame-Seq"] == str(newer)


async def test_uploads_status_and_live_frames_pass_through_uncached(
        livecam: ServerProcess, varnish: Varnish) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            before = varnish.origin_requests()
            seq = await upload(session, varnish.url)  # a camera may upload through the edge
            async with session.get(f"{varnish.url}/status") as status:
                assert status.status == 200
                assert status.headers["X-Cache"] == "pass"
                assert (await status.json())["cameras"]["default"]["seq"] == seq
            async with session.get(f"{varnish.url}/live.jpeg") as live:
                assert live.headers["X-Cache"] == "pass"
                assert live.headers["X-Frame-Seq"] == str(seq)
            # Without `after`, /next.jpeg means "the frame after the newest", whenever it is
            # asked: never a stored answer.
            async with session.get(f"{varnish.url}/next.jpeg?timeout=0.2") as nxt:
                assert nxt.status == 204
                assert nxt.headers["X-Cache"] == "pass"
            assert varnish.origin_requests() - before == 4
        async with session.post(f"{varnish.url}/upload", data=FRAME) as refused:
            assert refused.status == 401
            assert refused.headers["X-Cache"] == "pass"


async def skip_unless_served(session: aiohttp.ClientSession, url: str) -> None:
    """Streams come in their own issue: until livecam serves `url` there is no pipe to test."""
    async with session.get(url, headers={"Connection": "close"}) as response:
        if response.status == 404:
            pytest.skip(f"livecam does not serve {url.split('/', 3)[3]} yet")


async def test_the_mjpeg_stream_is_piped_through_varnish(
        livecam: ServerProcess, varnish: Varnish) -> None:
    async with aiohttp.ClientSession() as session:
        await upload(session, livecam.url)
        await skip_unless_served(session, f"{livecam.url}/stream.mjpg?after=0")
        async with session.get(f"{varnish.url}/stream.mjpg") as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert "X-Cache" not in stream.headers  # a tunnel: no VCL ran on the response
            start = b""
            async with asyncio.timeout(10):
                while b"\xff\xd8" not in start:
                    await upload(session, livecam.url)
                    start += await stream.content.read(65536)


async def test_camera_and_viewer_websockets_are_piped_through_varnish(
        livecam: ServerProcess, varnish: Varnish) -> None:
    async with aiohttp.ClientSession() as session:
        await upload(session, livecam.url)
        await skip_unless_served(session, f"{livecam.url}/ws")
        async with session.ws_connect(f"{varnish.url}/upload/ws", headers=AUTH) as camera, \
                session.ws_connect(f"{varnish.url}/ws") as viewer:
            async with asyncio.timeout(10):
                await camera.send_bytes(FRAME)
                accepted = await camera.receive_json()
                message = await viewer.receive()
            assert accepted["seq"] >= 1
            assert message.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT)


async def test_resized_long_polls_are_cached_per_width(
        livecam: ServerProcess, varnish: Varnish) -> None:
    async with aiohttp.ClientSession() as session:
        seq = await upload(session, livecam.url)
        small = f"{varnish.url}/next.jpeg?after={seq - 1}&width=160"
        async with session.get(small) as first, session.get(small) as second:
            assert first.headers["X-Cache"] == "miss"
            assert second.headers["X-Cache"] == "hit"
            assert await first.read() == await second.read() != FRAME


async def test_with_no_edge_cache_every_viewer_goes_to_livecam(tmp_path: Path) -> None:
    """--no-edge-cache marks frames no-cache: Varnish must not keep them (its default TTL
    would be 120 s), whatever the URL."""
    with ServerProcess(tmp_path / "livecam.db", "--no-access-log", "--no-edge-cache") as origin:
        try:
            with running_varnish(origin, tmp_path / "varnish") as edge:
                async with aiohttp.ClientSession() as session:
                    seq = await upload(session, origin.url)
                    before = edge.origin_requests()
                    for _ in range(3):
                        url = f"{edge.url}/next.jpeg?after={seq - 1}"
                        async with session.get(url) as response:
                            assert response.status == 200
                            assert response.headers["Cache-Control"] == "no-cache"
                            assert response.headers["X-Cache"] != "hit"
                    assert edge.origin_requests() - before == 3
        finally:
            origin.stop()


async def test_a_frame_arrives_over_https_through_nginx_varnish_and_livecam(
        livecam: ServerProcess, varnish: Varnish, tls_front: TlsFront) -> None:
    connector = aiohttp.TCPConnector(ssl=tls_front.context)
    async with aiohttp.ClientSession(connector=connector) as session:
        seq = await upload(session, tls_front.url)  # uploads work through the front too
        url = f"{tls_front.url}/next.jpeg?after={seq - 1}"
        async with session.get(url) as first, session.get(url) as second:
            assert first.status == second.status == 200
            assert await first.read() == await second.read() == FRAME
            assert first.headers["X-Frame-Seq"] == str(seq)
            assert second.headers["X-Cache"] == "hit"  # Varnish answered behind nginx
        # The piped paths survive the front too: a WebSocket over TLS, and a stream whose
        # first frame is not held back in a buffer.
        async with session.ws_connect(f"{tls_front.url.replace('https', 'wss')}/ws") as viewer:
            async with asyncio.timeout(10):
                await upload(session, tls_front.url)
                assert (await viewer.receive()).type in (aiohttp.WSMsgType.BINARY,
                                                         aiohttp.WSMsgType.TEXT)
        async with session.get(f"{tls_front.url}/stream.mjpg") as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            start = b""
            async with asyncio.timeout(10):
                while b"\xff\xd8" not in start:
                    await upload(session, livecam.url)
                    start += await stream.content.read(65536)
            # Hang up on the endless response: a polite TLS close would wait on nginx, which is
            # busy streaming, and outlive the test's event loop.
            stream.connection.transport.abort()
        async with session.get(f"{tls_front.redirect_url}/next.jpeg?after=1",
                               allow_redirects=False) as plain:
            assert plain.status == 301
            assert plain.headers["Location"].startswith("https://")


def test_the_tls_front_offers_http2(tls_front: TlsFront) -> None:
    """Browsers open at most six HTTP/1.1 connections per site: with a grid of cameras
    long-polling, only HTTP/2 keeps them all moving. nginx must offer it in the handshake."""
    context = ssl.create_default_context(cafile=str(tls_front.certificate))
    context.set_alpn_protocols(["h2", "http/1.1"])
    host, port = tls_front.url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        assert tls.selected_alpn_protocol() == "h2"
