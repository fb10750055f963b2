"""Streams for every kind of client: MJPEG and WebSocket (issue: streams).

Real app, real sockets: an aiohttp client, a bare socket that stops reading, ffmpeg.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import shutil
import socket
import tracemalloc

import aiohttp
import pytest
from support import PASSWORD, make_jpeg

import livecam

BOUNDARY = b"--livecamframe"
SAFETY = 20  # seconds: only so a broken server fails a test instead of hanging it


async def read_part(stream: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """The next multipart part of an MJPEG stream: its headers and exactly its JPEG."""
    async with asyncio.timeout(SAFETY):
        line = await stream.readline()
        while line.strip() in (b"", BOUNDARY):
            if not line:
                raise EOFError("the stream ended")
            line = await stream.readline()
        headers = {}
        while line.strip():
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
            line = await stream.readline()
        return headers, await stream.readexactly(int(headers["content-length"]))


async def read_part_with_seq(stream: asyncio.StreamReader, seq: int,
                             most: int) -> tuple[int, bytes]:
    """Read parts until the one numbered `seq`; returns how many parts that took."""
    for count in range(1, most + 1):
        headers, body = await read_part(stream)
        if int(headers["x-frame-seq"]) == seq:
            return count, body
    raise AssertionError(f"frame {seq} not among the next {most} parts")


async def upload(client, jpeg: bytes, camera: str = "") -> dict:
    response = await client.post(f"{camera}/upload", data=jpeg,
                                 headers={"Authorization": f"Bearer {PASSWORD}"})
    assert response.status == 200, await response.text()
    return await response.json()


async def viewers(client) -> int:
    status = await (await client.get("/status")).json()
    return status["cameras"]["default"]["viewers"]


async def eventually(check, what: str) -> None:
    for _ in range(SAFETY * 50):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"waited in vain for {what}")


def long_memory(settings: livecam.Settings) -> livecam.Settings:
    """A server that remembers past viewers for a minute: only a viewer seen to leave drops
    out of the count before then."""
    return dataclasses.replace(settings, viewer_window=60.0)


def tool(name: str) -> str:
    """A system tool, or a skip (a failure under CI=true)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI")
        pytest.skip(f"{name} is not installed")
    return path


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read a WebSocket to its end; the code the server closed it with."""
    async for _message in ws:
        pass
    return ws.close_code


class StalledViewer:
    """An MJPEG viewer on a bare socket with a tiny receive buffer; reads only when asked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stream, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, path: str = "/stream.mjpg") -> StalledViewer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small reader limit: asyncio stops reading the socket past 8 KiB buffered.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        # HTTP/1.0, as old MJPEG clients speak it: the parts arrive unchunked.
        writer.write(f"GET {path} HTTP/1.0\r\nHost: livecam\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200", head
        return cls(reader, writer)

    async def __aenter__(self) -> StalledViewer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# --- MJPEG --------------------------------------------------------------------------------


async def test_mjpeg_parts_carry_headers_and_exactly_the_uploaded_jpeg(client):
    first = make_jpeg(320, 240, comment=b"one")
    await upload(client, first)
    response = await client.get("/stream.mjpg")
    assert response.status == 200
    assert response.headers["Content-Type"] == (
        "multipart/x-mixed-replace; boundary=livecamframe")
    assert "no-store" in response.headers["Cache-Control"]
    headers, body = await read_part(response.content)
    assert body == first
    assert headers["content-type"] == "image/jpeg"
    assert headers["content-length"] == str(len(first))
    assert headers["x-frame-seq"] == "1"
    status = await (await client.get("/status")).json()
    assert float(headers["x-timestamp"]) == pytest.approx(
        status["cameras"]["default"]["timestamp"], abs=1e-3)
    second = make_jpeg(320, 240, comment=b"two")
    await upload(client, second)
    _, body = await read_part_with_seq(response.content, 2, most=3)
    assert body == second
    response.close()


async def test_mjpeg_sends_each_new_frame_as_its_own_part(client):
    await upload(client, make_jpeg(comment=b"0"))
    response = await client.get("/stream.mjpg")
    await read_part(response.content)
    for n in range(1, 4):
        jpeg = make_jpeg(comment=str(n).encode())
        answer = await upload(client, jpeg)
        _, body = await read_part_with_seq(response.content, answer["seq"], most=3)
        assert body == jpeg
    response.close()


async def test_silent_camera_repeats_its_last_frame(client):
    jpeg = make_jpeg(comment=b"still")
    await upload(client, jpeg)
    response = await client.get("/stream.mjpg")
    first_headers, _ = await read_part(response.content)
    again_headers, again = await read_part(response.content)  # about a second later
    assert again == jpeg
    assert again_headers["x-frame-seq"] == first_headers["x-frame-seq"] == "1"
    response.close()


async def test_stream_waits_for_the_first_frame_of_a_new_camera(client):
    response = await client.get("/stream.mjpg")
    assert response.status == 200
    part = asyncio.ensure_future(read_part(response.content))
    jpeg = make_jpeg(comment=b"first")
    await upload(client, jpeg)
    assert (await part)[1] == jpeg
    response.close()


async def test_mjpg_streamer_action_stream_alias_and_named_camera_streams(client):
    jpeg = make_jpeg(comment=b"alias")
    await upload(client, jpeg)
    alias = await client.get("/?action=stream")
    assert alias.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    assert (await read_part(alias.content))[1] == jpeg
    alias.close()
    head = await client.head("/stream.mjpg")
    assert head.status == 200 and head.headers["Content-Type"].startswith("multipart/")
    garden = make_jpeg(comment=b"garden")
    await upload(client, garden, camera="/cams/garden")
    named = await client.get("/cams/garden/stream.mjpg")
    assert (await read_part(named.content))[1] == garden
    named.close()
    assert (await client.get("/cams/nobody/stream.mjpg")).status == 404


async def test_stream_width_gives_the_resized_variant_and_bad_values_are_400(client):
    await upload(client, make_jpeg(640, 480))
    response = await client.get("/stream.mjpg?width=160")
    _, body = await read_part(response.content)
    assert livecam.inspect_jpeg(body) == (160, 120)
    response.close()
    for query in ("width=161", "fps=0", "fps=fast"):
        bad = await client.get(f"/stream.mjpg?{query}")
        assert bad.status == 400, query
        assert (await bad.text()).count("\n") == 1


async def test_stream_carries_the_allowed_origin(aiohttp_client, settings):
    app = livecam.create_app(livecam.Settings(
        db_path=settings.db_path, password=PASSWORD, allow_origin="https://dash.example"))
    client = await aiohttp_client(app)
    await upload(client, make_jpeg())
    response = await client.get("/stream.mjpg")
    assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    response.close()


async def test_a_stream_viewer_counts_and_stops_counting_at_once_on_disconnect(
        aiohttp_client, settings):
    client = await aiohttp_client(livecam.create_app(long_memory(settings)))
    await upload(client, make_jpeg())
    assert await viewers(client) == 0
    response = await client.get("/stream.mjpg")
    await read_part(response.content)
    assert await viewers(client) == 1
    response.close()  # the client hangs up

    async def gone() -> bool:
        return await viewers(client) == 0

    await eventually(gone, "the viewer to stop counting")


async def test_ffmpeg_reads_five_frames_from_the_stream(aiohttp_server, settings):
    ffmpeg = tool("ffmpeg")
    server = await aiohttp_server(livecam.create_app(settings))
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as session:

        async def camera() -> None:
            for n in range(400):  # bounded: 20 s at 20 fps
                await upload(session, make_jpeg(160, 120, color=(n % 256, 90, 160)))
                await asyncio.sleep(0.05)

        uploading = asyncio.create_task(camera())
        try:
            process = await asyncio.create_subprocess_exec(
                ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
                "-i", str(server.make_url("/stream.mjpg")), "-frames:v", "5", "-f", "null", "-",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            async with asyncio.timeout(SAFETY):
                _, errors = await process.communicate()
        finally:
            uploading.cancel()
            await asyncio.gather(uploading, return_exceptions=True)
    assert process.returncode == 0, errors.decode()


async def test_stalled_reader_does_not_grow_server_memory_then_gets_the_newest_frame(
        aiohttp_server, settings):
    server = await aiohttp_server(livecam.create_app(settings))
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(base_url=str(server.make_url("/"))))
        await upload(session, make_jpeg(comment=b"first"))
        viewer = await stack.enter_async_context(await StalledViewer.open(server.port))
        await read_part(viewer.stream)  # then it stops reading
        frames = [make_jpeg(320, 240, noise=True, comment=b"%d" % n) for n in range(40)]
        for jpeg in frames[:4]:  # fill the socket buffers, so the stream is stalled
            await upload(session, jpeg)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for jpeg in frames[4:]:
                last = await upload(session, jpeg)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        largest = max(map(len, frames))
        queued = [connection.transport.get_write_buffer_size()
                  for connection in server.runner.server.connections
                  if connection.transport is not None]
        # 36 more frames (~4 MB) were published; the stalled viewer holds on to at most
        # the one part it is being sent.
        assert grown < 3 * largest, (grown, largest)
        assert max(queued) < largest + 1024, queued
        parts, body = await read_part_with_seq(viewer.stream, last["seq"], most=6)
        assert body == frames[-1]
        assert parts < 6  # frames it was too slow for were skipped, not queued


# --- WebSocket viewer ------------------------------------------------------------------------


async def test_ws_viewer_gets_json_then_the_jpeg_and_stops_counting_when_it_closes(
        aiohttp_client, settings):
    client = await aiohttp_client(livecam.create_app(long_memory(settings)))
    jpeg = make_jpeg(320, 240, comment=b"ws")
    await upload(client, jpeg)
    async with client.ws_connect("/ws") as ws:
        summary = await ws.receive_json(timeout=SAFETY)
        assert summary["seq"] == 1
        assert summary["width"] == 320 and summary["height"] == 240
        assert isinstance(summary["timestamp"], float) and summary["age"] >= 0
        assert await ws.receive_bytes(timeout=SAFETY) == jpeg
        newer = make_jpeg(320, 240, comment=b"newer")
        await upload(client, newer)
        while (await ws.receive_json(timeout=SAFETY))["seq"] != 2:
            await ws.receive_bytes(timeout=SAFETY)
        assert await ws.receive_bytes(timeout=SAFETY) == newer
        assert await viewers(client) == 1

    async def gone() -> bool:
        return await viewers(client) == 0

    await eventually(gone, "the closed WebSocket to stop counting")


async def test_ws_viewer_that_lags_skips_to_the_newest_frame(client):
    await upload(client, make_jpeg(comment=b"start"))
    frames = [make_jpeg(320, 240, noise=True, comment=b"%d" % n) for n in range(40)]
    async with client.ws_connect("/ws") as ws:
        await ws.receive_json(timeout=SAFETY)
        await ws.receive_bytes(timeout=SAFETY)
        for jpeg in frames:  # the viewer reads none of these as they come
            last = await upload(client, jpeg)
        received = 0
        while True:
            summary = await ws.receive_json(timeout=SAFETY)
            body = await ws.receive_bytes(timeout=SAFETY)
            received += 1
            if summary["seq"] == last["seq"]:
                break
        assert body == frames[-1]
        assert received < len(frames)


# --- WebSocket upload ------------------------------------------------------------------------


async def test_ws_upload_acks_each_frame_with_seq_and_viewers(client):
    async with client.ws_connect("/upload/ws",
                                 headers={"Authorization": f"Bearer {PASSWORD}"}) as ws:
        for seq in (1, 2):
            jpeg = make_jpeg(comment=b"%d" % seq)
            await ws.send_bytes(jpeg)
            assert await ws.receive_json(timeout=SAFETY) == {"seq": seq, "viewers": 0}
    live = await client.get("/live.jpeg")
    assert await live.read() == jpeg
    async with client.ws_connect(f"/cams/porch/upload/ws?password={PASSWORD}") as ws:
        await ws.send_bytes(make_jpeg())
        assert (await ws.receive_json(timeout=SAFETY))["seq"] == 1
    assert (await client.get("/cams/porch/live.jpeg")).status == 200


async def test_ws_upload_with_a_wrong_password_is_refused_before_the_upgrade(client):
    plain = await client.get("/upload/ws?password=wrong")
    assert plain.status == 401
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "password" in await plain.text()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/upload/ws", headers={"Authorization": "Bearer wrong"})
    assert refused.value.status == 401


async def test_ws_upload_rejects_what_http_rejects_and_keeps_the_stored_frame(client):
    good = make_jpeg(comment=b"good")
    async with client.ws_connect(f"/upload/ws?password={PASSWORD}") as ws:
        await ws.send_bytes(good)
        assert (await ws.receive_json(timeout=SAFETY))["seq"] == 1
        await ws.send_bytes(b"GIF89a not a jpeg")
        answer = await ws.receive_json(timeout=SAFETY)
        assert answer["status"] == 415 and "JPEG" in answer["error"]
        await ws.send_bytes(good[:-200])
        assert (await ws.receive_json(timeout=SAFETY))["status"] == 400
        await ws.send_str("hello")
        answer = await ws.receive_json(timeout=SAFETY)
        assert answer["status"] == 415 and "binary" in answer["error"]
    live = await client.get("/live.jpeg")
    assert await live.read() == good
    assert live.headers["X-Frame-Seq"] == "1"


# --- shutdown --------------------------------------------------------------------------------


async def test_shutdown_closes_open_streams_and_sockets_without_waiting_out_the_timeout(
        aiohttp_server, settings):
    # aiohttp itself would wait 15 s for handlers: finishing within 10 s shows the server
    # ended every stream by itself.
    server = await aiohttp_server(livecam.create_app(settings), shutdown_timeout=15)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(base_url=str(server.make_url("/"))))
        await upload(session, make_jpeg(320, 240, noise=True))
        stream = await session.get("/stream.mjpg")
        await read_part(stream.content)
        stalled = await stack.enter_async_context(await StalledViewer.open(server.port))
        await read_part(stalled.stream)
        for _ in range(4):
            await upload(session, make_jpeg(320, 240, noise=True))
        viewer = await session.ws_connect("/ws")
        camera = await session.ws_connect(f"/upload/ws?password={PASSWORD}")
        closes = asyncio.gather(close_code(viewer), close_code(camera))
        async with asyncio.timeout(10):
            await server.close()
            assert await closes == [aiohttp.WSCloseCode.GOING_AWAY] * 2
        with pytest.raises((EOFError, aiohttp.ClientPayloadError, ConnectionError)):
            while True:
                await read_part(stream.content)
