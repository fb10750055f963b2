"""uploader.py against a live livecam on a loopback port: real HTTP, real frames.

The only stand-in is picamera2 (tests/fake_picamera2), at the hardware boundary; the slow
server in the memory test is a peer of our own, not a copy of livecam.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import signal
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from support import PASSWORD, ROOT, free_port, make_jpeg

import livecam
import uploader

FAKE_PICAMERA2 = ROOT / "tests" / "fake_picamera2"
SMALL = {"width": 160, "height": 120}
TRANSPORTS = ["http", "ws"]  # one POST per frame, or one lasting WebSocket: same behaviour


@contextlib.asynccontextmanager
async def livecam_server(db: Path, port: int = 0, **settings: object) -> AsyncIterator[str]:
    """A real livecam app on 127.0.0.1; yields its base URL."""
    app = livecam.create_app(livecam.Settings(
        db_path=db, password=PASSWORD, host="127.0.0.1", port=port, access_log=False,
        **settings))
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def uploading(options: uploader.Options) -> AsyncIterator[asyncio.Task[int]]:
    """uploader.run() as a task beside the test; cancelled (and must stop cleanly) at the end."""
    task = asyncio.create_task(uploader.run(options))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def demo_options(url: str, **changes: object) -> uploader.Options:
    fields = {"url": url, "password": PASSWORD, "source": "demo", "quiet": True,
              "max_backoff": 0.5, **SMALL}
    return uploader.Options(**{**fields, **changes})


async def current_seq(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/status") as response:
        cameras = (await response.json())["cameras"]
    return cameras.get("default", {}).get("seq") or 0


async def wait_for_seq(session: aiohttp.ClientSession, base: str, above: int,
                       seconds: float = 15) -> int:
    async with asyncio.timeout(seconds):
        while True:
            if (seq := await current_seq(session, base)) > above:
                return seq
            await asyncio.sleep(0.05)


async def watch(session: aiohttp.ClientSession, base: str, frames: list[bytes]) -> None:
    """A viewer following /next.jpeg, appending each frame it gets; runs until cancelled."""
    after = 0
    while True:
        async with session.get(f"{base}/next.jpeg", params={"after": after, "timeout": 5}) as r:
            if r.status == 200:
                frames.append(await r.read())
                after = int(r.headers["X-Frame-Seq"])


@contextlib.asynccontextmanager
async def watching(session: aiohttp.ClientSession, base: str) -> AsyncIterator[list[bytes]]:
    frames: list[bytes] = []
    viewer = asyncio.create_task(watch(session, base, frames))
    try:
        yield frames
    finally:
        viewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await viewer


async def run_cli(*args: str, env: dict[str, str] | None = None,
                  ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "uploader.py"), *args,
        env={**os.environ, "LIVECAM_PASSWORD": PASSWORD, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(process: asyncio.subprocess.Process, seconds: float = 20) -> tuple[int, str]:
    """Wait (bounded) for a CLI run to exit; its status and stderr."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    return process.returncode, (out + err).decode()


# --- the demo source and the server ---------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_demo_source_keeps_the_server_fed_and_seq_advances(tmp_path, transport):
    async with (livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http,
                uploading(demo_options(base, fps=20, transport=transport)),
                watching(http, base) as frames):
        first = await wait_for_seq(http, base, 0)
        await wait_for_seq(http, base, first + 5)
        async with http.get(f"{base}/live.jpeg") as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            picture = Image.open(io.BytesIO(await response.read()))
        assert picture.size == (160, 120)
        assert frames, "the viewer got frames"


async def test_uploads_to_a_named_camera_with_camera_flag(tmp_path):
    async with (livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http,
                uploading(demo_options(base, camera="garden"))):
        async with asyncio.timeout(15):
            while True:
                async with http.get(f"{base}/cams/garden/live.jpeg") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
        assert await current_seq(http, base) == 0, "nothing went to the default camera"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_uploader_resumes_by_itself_after_the_server_restarts(tmp_path, caplog,
                                                                    transport):
    caplog.set_level(logging.INFO, logger="uploader")
    db, port = tmp_path / "cam.db", free_port()
    async with aiohttp.ClientSession() as http, uploading(demo_options(
            f"http://127.0.0.1:{port}", fps=20, idle_fps=20, transport=transport)) as task:
        async with livecam_server(db, port) as base:
            before_stop = await wait_for_seq(http, base, 2)
        stopped_at = len(caplog.records)
        await asyncio.sleep(1)  # server gone: refused connections, backoff
        assert not task.done()
        async with livecam_server(db, port) as base:
            restart_seq = await current_seq(http, base)
            assert restart_seq >= before_stop, "the frame survived the restart"
            await wait_for_seq(http, base, restart_seq + 2)
    since_stop = [r.getMessage() for r in caplog.records[stopped_at:]]
    assert any("failed" in m for m in since_stop)
    assert any("uploading again" in m for m in since_stop)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_wrong_password_exits_with_status_2(tmp_path, transport):
    async with livecam_server(tmp_path / "cam.db") as base:
        process = await run_cli("--url", base, "--source", "demo", "--width", "160",
                                "--height", "120", "--transport", transport,
                                env={"LIVECAM_PASSWORD": "wrong"})
        status, output = await finish(process)
    assert status == 2
    assert "password" in output


async def test_a_redirecting_server_exits_with_status_2_naming_the_new_address(caplog):
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("https://camera.example/upload")

    app = web.Application()
    app.router.add_post("/upload", moved)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        status = await uploader.run(demo_options(f"http://127.0.0.1:{runner.addresses[0][1]}"))
    finally:
        await runner.cleanup()
    assert status == 2
    assert any("https://camera.example/upload" in r.getMessage() for r in caplog.records)


async def test_missing_password_is_refused_before_anything_starts():
    process = await run_cli("--url", "http://127.0.0.1:9", "--source", "demo",
                            env={"LIVECAM_PASSWORD": ""})
    status, output = await finish(process)
    assert status == 2
    assert "LIVECAM_PASSWORD" in output


async def test_sigterm_stops_the_cli_cleanly(tmp_path):
    async with livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http:
        process = await run_cli("--url", base, "--source", "demo", "--width", "160",
                                "--height", "120")
        await wait_for_seq(http, base, 0)
        process.send_signal(signal.SIGTERM)
        status, output = await finish(process, 10)
    assert status == 0
    assert "stopped" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_oversized_frame_is_reported_with_its_size_and_the_next_one_goes(tmp_path,
                                                                                caplog,
                                                                                transport):
    caplog.set_level(logging.INFO, logger="uploader")
    big, small = make_jpeg(200, 200, noise=True), make_jpeg()
    (tmp_path / "1-big.jpg").write_bytes(big)
    (tmp_path / "2-small.jpg").write_bytes(small)
    limit = len(big) - 1
    async with (livecam_server(tmp_path / "cam.db", max_frame_bytes=limit) as base,
                aiohttp.ClientSession() as http, watching(http, base),
                uploading(demo_options(base, source=f"files:{tmp_path}/*.jpg", fps=20,
                                       transport=transport))):
        await wait_for_seq(http, base, 3)  # every small frame after a big one gets through
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals[0].startswith(f"frame of {len(big)} bytes refused: 413 ")


def test_every_flag_has_an_options_field_with_the_same_default(monkeypatch):
    monkeypatch.setenv("LIVECAM_PASSWORD", PASSWORD)
    parsed = uploader.options_from_args(["--url", "http://127.0.0.1:8080"])
    assert parsed == uploader.Options(url="http://127.0.0.1:8080", password=PASSWORD)


async def test_a_camera_name_the_server_would_refuse_exits_with_status_2():
    status = await uploader.run(demo_options("http://127.0.0.1:9", camera="Front Door"))
    assert status == 2


# --- the files source -----------------------------------------------------------------------


async def test_files_source_sends_each_file_byte_for_byte(tmp_path):
    folder = tmp_path / "timelapse"
    folder.mkdir()
    originals = {make_jpeg(comment=f"frame {i}".encode()) for i in range(3)}
    for i, frame in enumerate(sorted(originals)):
        (folder / f"{i:03}.jpg").write_bytes(frame)
    async with (livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http,
                uploading(demo_options(base, source=f"files:{folder}/*.jpg", fps=20)),
                watching(http, base) as frames):
        async with asyncio.timeout(15):
            while set(frames) != originals:
                assert set(frames) <= originals, "every frame is one of the files, unchanged"
                await asyncio.sleep(0.05)


async def test_files_source_with_no_matching_files_exits_with_status_2(tmp_path):
    status = await uploader.run(demo_options("http://127.0.0.1:9",
                                             source=f"files:{tmp_path}/*.jpg"))
    assert status == 2


# --- newest frame wins, idle awareness --------------------------------------------------------


@contextlib.asynccontextmanager
async def slow_server(delay: float,
                      ) -> AsyncIterator[tuple[str, list[int], asyncio.Event]]:
    """A peer that takes `delay` seconds to accept each frame and always reports a viewer.

    Yields its URL, the sizes of the frames it accepted, and an event set at the second one.
    """
    received: list[int] = []
    warmed_up = asyncio.Event()

    async def accept(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(delay)
        received.append(len(body))
        if len(received) == 2:
            warmed_up.set()
        return web.json_response({"seq": len(received), "bytes": len(body), "width": 0,
                                  "height": 0, "viewers": 1})

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/upload", accept)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received, warmed_up
    finally:
        await runner.cleanup()


def last_status(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(sent, dropped) from the newest status line."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sent ")]
    match = re.match(r"sent (\d+) frames .*dropped (\d+)", lines[-1])
    assert match, lines[-1]
    return int(match[1]), int(match[2])


async def test_a_slow_server_makes_frames_drop_not_pile_up(caplog):
    caplog.set_level(logging.INFO, logger="uploader")
    tracemalloc.start()
    try:
        async with slow_server(delay=0.25) as (base, received, warmed_up), uploading(
                demo_options(base, quiet=False, status_interval=0.25, fps=40, width=640,
                             height=480)):
            await asyncio.wait_for(warmed_up.wait(), 15)
            settled = tracemalloc.get_traced_memory()[0]
            frame_size = max(received)
            await asyncio.sleep(2.5)  # ~100 frames captured, ~10 accepted
            grown = tracemalloc.get_traced_memory()[0] - settled
            await asyncio.sleep(0.3)
            sent, dropped = last_status(caplog)
    finally:
        tracemalloc.stop()
    assert grown < 10 * frame_size, f"memory grew by {grown} bytes ({frame_size} per frame)"
    assert sent <= len(received) + 1
    assert dropped > 2 * sent, "frames the server was too slow for were dropped"


async def test_idle_rate_without_viewers_full_rate_while_someone_watches(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="uploader")
    window = 1.5
    async with (livecam_server(tmp_path / "cam.db", viewer_window=0.5) as base,
                aiohttp.ClientSession() as http,
                uploading(demo_options(base, fps=20, idle_fps=2))):
        start = await wait_for_seq(http, base, 1)  # the first answer said: nobody watches
        await asyncio.sleep(window)
        idle = await current_seq(http, base) - start
        async with watching(http, base):
            await asyncio.sleep(0.6)  # the next idle upload learns of the viewer
            start = await current_seq(http, base)
            await asyncio.sleep(window)
            full = await current_seq(http, base) - start
        await asyncio.sleep(1.5)  # viewer window passes, an upload learns nobody watches
        start = await current_seq(http, base)
        await asyncio.sleep(window)
        idle_again = await current_seq(http, base) - start
    assert idle <= 2 * window + 2
    assert idle_again <= 2 * window + 2
    assert full > 2 * max(idle, idle_again, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert "nobody watching: capturing at 2 fps" in messages
    assert "1 watching: capturing at 20 fps" in messages


# --- the Pi camera, through the stand-in picamera2 -------------------------------------------


def picamera_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(FAKE_PICAMERA2), "FAKE_PICAMERA2_LOG": str(tmp_path / "camera.log"),
            **extra}


async def test_picamera_source_rotates_stamps_and_closes_the_camera_on_sigterm(tmp_path):
    async with livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http:
        process = await run_cli("--url", base, "--source", "auto", "--width", "320",
                                "--height", "240", "--rotate", "180", "--timestamp",
                                "--fps", "10", "--idle-fps", "2", "--quiet",
                                env=picamera_env(tmp_path))
        await wait_for_seq(http, base, 1)
        async with http.get(f"{base}/live.jpeg") as response:
            picture = Image.open(io.BytesIO(await response.read())).convert("L")
        process.send_signal(signal.SIGTERM)
        status, output = await finish(process, 10)
    assert status == 0, output
    # The stand-in draws a white square near the top-left; rotated by 180 it is bottom-right.
    assert picture.size == (320, 240)
    assert picture.getpixel((320 - 20 - 40, 240 - 15 - 30)) > 200
    assert picture.getpixel((20 + 40, 15 + 30)) < 160
    # The timestamp strip (white text on black) starts at the top-left margin.
    darkest, brightest = picture.crop((4, 4, 150, 20)).getextrema()
    assert darkest < 40 and brightest > 200
    calls = (tmp_path / "camera.log").read_text().splitlines()
    assert "configure 320x240 XBGR8888 hflip=1 vflip=1" in calls
    assert "start_recording" in calls
    assert "controls FrameRate=2.0" in calls, "idle: the camera itself slows down"
    assert calls[-2:] == ["stop_recording", "close"]


async def test_picamera_source_falls_back_to_capture_file_without_encoders(tmp_path):
    async with livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http:
        process = await run_cli("--url", base, "--source", "picamera", "--width", "320",
                                "--height", "240", "--quiet",
                                env=picamera_env(tmp_path, FAKE_PICAMERA2_NO_ENCODERS="1"))
        await wait_for_seq(http, base, 1)
        process.send_signal(signal.SIGINT)
        status, output = await finish(process, 10)
    assert status == 0, output
    assert "capture_file" in output
    calls = (tmp_path / "camera.log").read_text().splitlines()
    assert "capture_file" in calls
    assert calls[-1] == "close"


async def test_no_camera_exits_with_status_1_so_systemd_tries_again(tmp_path):
    process = await run_cli("--url", "http://127.0.0.1:9", "--source", "picamera",
                            env=picamera_env(tmp_path, FAKE_PICAMERA2_NO_CAMERA="1"))
    status, output = await finish(process)
    assert status == 1
    assert "cannot open the camera" in output
    assert "Traceback" not in output


async def test_without_picamera2_the_message_says_how_to_install_it():
    process = await run_cli("--url", "http://127.0.0.1:9", "--source", "auto",
                            env={"PYTHONPATH": ""})
    status, output = await finish(process)
    assert status == 2
    assert "sudo apt install python3-picamera2" in output
    assert "--system-site-packages" in output
    assert "--source demo" in output


async def test_bench_prints_rate_size_and_cpu_per_frame(tmp_path):
    process = await run_cli("--bench", "1", "--source", "picamera", "--width", "320",
                            "--height", "240", env=picamera_env(tmp_path))
    status, output = await finish(process)
    assert status == 0, output
    assert re.search(r"\d+ frames in [\d.]+ s = [\d.]+ fps, [\d.]+ KB per frame, "
                     r"[\d.]+ ms CPU per frame", output)
    assert (tmp_path / "camera.log").read_text().splitlines()[-1] == "close"


# --- the password on the wire -----------------------------------------------------------------


@pytest.mark.parametrize(("url", "warned"), [
    ("http://8.8.8.8:8080", True),
    ("http://127.0.0.1:8080", False),
    ("http://192.168.1.20:8080", False),
    ("https://8.8.8.8", False),
])
async def test_warns_when_the_password_would_cross_the_internet_in_clear(url, warned, caplog):
    caplog.set_level(logging.WARNING, logger="uploader")
    await uploader.warn_if_password_exposed(url)
    assert any("plain http" in r.getMessage() for r in caplog.records) == warned


# --- refused frames, over either transport ----------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_file_that_is_not_a_jpeg_is_refused_and_the_next_one_goes(tmp_path, caplog,
                                                                          transport):
    caplog.set_level(logging.INFO, logger="uploader")
    not_jpeg = b"GIF89a this is no JPEG\n" * 20
    (tmp_path / "1-wrong.jpg").write_bytes(not_jpeg)
    (tmp_path / "2-right.jpg").write_bytes(make_jpeg())
    async with (livecam_server(tmp_path / "cam.db") as base, aiohttp.ClientSession() as http,
                watching(http, base) as frames,
                uploading(demo_options(base, source=f"files:{tmp_path}/*.jpg", fps=20,
                                       transport=transport)) as task):
        await wait_for_seq(http, base, 3)  # the JPEG after each refused file gets through
        assert not task.done()
    assert frames and all(frame.startswith(b"\xff\xd8") for frame in frames)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals[0].startswith(f"frame of {len(not_jpeg)} bytes refused: 415 ")
    assert not any("failed" in r.getMessage() for r in caplog.records), "no retry, no backoff"
