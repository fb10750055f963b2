"""The frame relay, seen from a camera and from viewers (issue: livecam.py end to end)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import stat
import time

import aiohttp
import pytest
from support import PASSWORD, ServerProcess, make_jpeg

import livecam

# --- uploads ---------------------------------------------------------------------------


async def test_upload_with_bearer_answers_seq_size_and_viewers(client, auth):
    jpeg = make_jpeg(320, 240)
    response = await client.post("/upload", data=jpeg, headers=auth)
    assert response.status == 200
    assert await response.json() == {"seq": 1, "bytes": len(jpeg), "width": 320,
                                     "height": 240, "viewers": 0}


async def test_tutorial_upload_with_password_query_and_no_content_type(client):
    jpeg = make_jpeg()
    response = await client.post(f"/?password={PASSWORD}", data=jpeg,
                                 skip_auto_headers=["Content-Type"])
    assert response.status == 200
    live = await client.get("/live.jpeg")
    assert await live.read() == jpeg


async def test_curl_style_form_urlencoded_body_is_the_raw_jpeg(client, auth):
    jpeg = make_jpeg()
    headers = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    assert (await client.post("/upload", data=jpeg, headers=headers)).status == 200
    assert await (await client.get("/live.jpeg")).read() == jpeg


async def test_multipart_file_field_is_accepted(client, auth):
    jpeg = make_jpeg()
    form = aiohttp.FormData()
    form.add_field("frame", jpeg, filename="x.jpg", content_type="image/jpeg")
    assert (await client.post("/upload", data=form, headers=auth)).status == 200
    assert await (await client.get("/live.jpeg")).read() == jpeg


async def test_multipart_without_a_file_is_a_400(client, auth):
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("note", "hello")
    form.add_field("other", "x")
    response = await client.post("/upload", data=form, headers=auth)
    assert response.status == 400
    assert "file field" in await response.text()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic eDp5"}])
async def test_missing_or_wrong_password_is_401_with_challenge(client, headers):
    response = await client.post("/upload", data=make_jpeg(), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "password" in await response.text()
    assert (await client.post("/?password=nope", data=make_jpeg())).status == 401


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"", 400, "empty"),
    (b"GIF89a not a jpeg", 415, "not a JPEG"),
    (make_jpeg()[:-200], 400, "truncated"),
    (b"\xff\xd8\xff\xd9", 400, "frame header"),
])
async def test_bad_bodies_get_a_clear_error_and_leave_the_frame(client, auth, body, status,
                                                                reason):
    good = make_jpeg()
    await client.post("/upload", data=good, headers=auth)
    response = await client.post("/upload", data=body, headers=auth)
    assert response.status == status
    text = await response.text()
    assert reason in text and text.count("\n") == 1
    live = await client.get("/live.jpeg")
    assert await live.read() == good
    assert live.headers["X-Frame-Seq"] == "1"


async def test_oversized_upload_is_413_naming_the_limit_and_keeps_the_frame(
        aiohttp_client, tmp_path, auth):
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                max_frame_bytes=20_000)
    client = await aiohttp_client(livecam.create_app(settings))
    good = make_jpeg()
    await client.post("/upload", data=good, headers=auth)
    big = make_jpeg(1000, 1000, comment=os.urandom(30_000))
    response = await client.post("/upload", data=big, headers=auth)
    assert response.status == 413
    assert "20000" in await response.text()

    async def chunked():  # no Content-Length: the limit is enforced while reading
        yield big

    response = await client.post("/upload", data=chunked(), headers=auth)
    assert response.status == 413
    assert await (await client.get("/live.jpeg")).read() == good


async def test_default_size_limit_accepts_frames_above_aiohttp_1mib_default(client, auth):
    jpeg = make_jpeg(1200, 900, noise=True)
    assert len(jpeg) > 1024 * 1024
    form = aiohttp.FormData()
    form.add_field("frame", io.BytesIO(jpeg), filename="big.jpg")
    assert (await client.post("/upload", data=form, headers=auth)).status == 200
    assert (await client.post("/upload", data=io.BytesIO(jpeg), headers=auth)).status == 200


async def test_size_comes_from_the_frame_header_not_the_exif_thumbnail(client, auth):
    thumbnail = make_jpeg(16, 12)
    exif = b"Exif\0\0" + thumbnail
    app1 = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    main = make_jpeg(320, 200)
    jpeg = main[:2] + app1 + main[2:]
    body = await (await client.post("/upload", data=jpeg, headers=auth)).json()
    assert (body["width"], body["height"]) == (320, 200)


# --- viewing -----------------------------------------------------------------------------


async def test_live_before_any_frame_is_503_with_retry_after(client):
    response = await client.get("/live.jpeg")
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert "not sent a frame" in await response.text()


async def test_live_serves_stored_bytes_with_frame_headers(client, auth):
    jpeg = make_jpeg()
    await client.post("/upload", data=jpeg, headers=auth)
    response = await client.get("/live.jpeg?1700000000")  # unknown parameters are ignored
    assert response.status == 200
    assert await response.read() == jpeg
    headers = response.headers
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Length"] == str(len(jpeg))
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Frame-Seq"] == "1"
    assert abs(float(headers["X-Frame-Timestamp"]) - time.time()) < 60
    assert 0 <= int(headers["X-Frame-Age"]) < 60_000
    assert headers["Last-Modified"].endswith("GMT")
    head = await client.head("/live.jpeg")
    assert head.status == 200 and head.headers["ETag"] == headers["ETag"]


async def test_if_none_match_gets_304_until_a_new_frame(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    etag = (await client.get("/live.jpeg")).headers["ETag"]
    assert (await client.get("/live.jpeg", headers={"If-None-Match": etag})).status == 304
    await client.post("/upload", data=make_jpeg(), headers=auth)
    response = await client.get("/live.jpeg", headers={"If-None-Match": etag})
    assert response.status == 200 and response.headers["ETag"] != etag


async def test_next_returns_a_newer_frame_at_once(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    await client.post("/upload", data=make_jpeg(), headers=auth)
    response = await client.get("/next.jpeg?after=1")
    assert response.status == 200 and response.headers["X-Frame-Seq"] == "2"
    assert response.headers["Cache-Control"] == "public, max-age=0, s-maxage=2"


async def test_next_waits_for_the_upload_then_answers(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    waiting = asyncio.ensure_future(client.get("/next.jpeg"))  # no after: the next one
    await asyncio.sleep(0.2)
    assert not waiting.done()
    second = make_jpeg(color=(1, 2, 3))
    await client.post("/upload", data=second, headers=auth)
    response = await waiting
    assert response.headers["X-Frame-Seq"] == "2"
    assert await response.read() == second


async def test_next_times_out_with_204_no_store(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    response = await client.get("/next.jpeg?after=1&timeout=0.2")
    assert response.status == 204
    assert response.headers["Cache-Control"] == "no-store"


async def test_next_ahead_of_the_server_gets_the_newest_at_once(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    response = await client.get("/next.jpeg?after=999&timeout=5")
    assert response.status == 200 and response.headers["X-Frame-Seq"] == "1"


@pytest.mark.parametrize("query", ["after=abc", "after=-1", "timeout=soon", "timeout=-3",
                                   "timeout=nan", "after=1.5"])
async def test_malformed_long_poll_parameters_are_400(client, query):
    response = await client.get(f"/next.jpeg?{query}")
    assert response.status == 400
    assert "must be" in await response.text()


async def test_a_keeping_up_viewer_sees_every_frame_once(client, auth):
    seen: list[int] = []

    async def viewer():
        after = 0
        while len(seen) < 20:
            response = await client.get(f"/next.jpeg?after={after}&timeout=5")
            assert response.status == 200
            after = int(response.headers["X-Frame-Seq"])
            seen.append(after)

    task = asyncio.ensure_future(viewer())
    for _ in range(20):
        await asyncio.sleep(0.03)
        await client.post("/upload", data=make_jpeg(), headers=auth)
    await asyncio.wait_for(task, 10)
    assert seen == list(range(1, 21))


async def test_one_upload_wakes_hundreds_of_long_polls(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    viewers = 300
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = client.make_url("/next.jpeg?after=1&timeout=20")
        polls = [asyncio.ensure_future(session.get(url)) for _ in range(viewers)]
        for _ in range(200):  # until every poll is held by the server
            status = await (await client.get("/status")).json()
            if status["cameras"]["default"]["viewers"] >= viewers:
                break
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        upload = await client.post("/upload", data=make_jpeg(), headers=auth)
        upload_ms = (time.perf_counter() - started) * 1000
        assert (await upload.json())["viewers"] >= viewers
        responses = await asyncio.wait_for(asyncio.gather(*polls), 20)
        assert [r.headers["X-Frame-Seq"] for r in responses] == ["2"] * viewers
        for response in responses:
            response.release()
    print(f"one upload woke {viewers} long-polls; the upload request took {upload_ms:.1f} ms")


async def test_a_viewer_that_hangs_up_stops_counting_at_once(aiohttp_client, tmp_path, auth):
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                viewer_window=60)  # only hanging up can end the count
    client = await aiohttp_client(livecam.create_app(settings))
    await client.post("/upload", data=make_jpeg(), headers=auth)

    async def viewers() -> int:
        return (await (await client.get("/status")).json())["cameras"]["default"]["viewers"]

    async def until(count: int) -> int:
        for _ in range(100):
            if (seen := await viewers()) == count:
                break
            await asyncio.sleep(0.02)
        return seen

    async with aiohttp.ClientSession() as session:
        poll = asyncio.ensure_future(session.get(client.make_url("/next.jpeg?timeout=30")))
        assert await until(1) == 1
        poll.cancel()
    assert await until(0) == 0


async def test_viewers_count_recent_fetchers(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    assert (await (await client.post("/upload", data=make_jpeg(), headers=auth)).json()
            )["viewers"] == 0
    await client.get("/live.jpeg")
    body = await (await client.post("/upload", data=make_jpeg(), headers=auth)).json()
    assert body["viewers"] == 1


# --- persistence ---------------------------------------------------------------------------


async def test_a_restarted_server_serves_the_last_frame_with_its_seq(aiohttp_client,
                                                                     settings, auth):
    first = await aiohttp_client(livecam.create_app(settings))
    for _ in range(3):
        await first.post("/upload", data=make_jpeg(), headers=auth)
    last = make_jpeg(color=(9, 9, 9))
    await first.post("/upload", data=last, headers=auth)
    etag = (await first.get("/live.jpeg")).headers["ETag"]
    await first.close()

    second = await aiohttp_client(livecam.create_app(settings))
    response = await second.get("/live.jpeg")
    assert await response.read() == last
    assert response.headers["X-Frame-Seq"] == "4"
    assert response.headers["ETag"] == etag
    body = await (await second.post("/upload", data=make_jpeg(), headers=auth)).json()
    assert body["seq"] == 5


def stored_seq(db_path) -> int | None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path)) as db:
        row = db.execute("SELECT seq FROM frames WHERE camera = 'default'").fetchone()
    return row and row[0]


def meta(db_path) -> dict[str, str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return dict(db.execute("SELECT key, value FROM meta"))


async def test_writes_are_rate_limited_but_the_newest_is_flushed_on_close(aiohttp_client,
                                                                          tmp_path, auth):
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                persist_interval=60)
    client = await aiohttp_client(livecam.create_app(settings))
    frames = [make_jpeg(color=(i, i, i)) for i in range(5)]
    for jpeg in frames:
        await client.post("/upload", data=jpeg, headers=auth)
    await asyncio.sleep(0.3)
    assert stored_seq(settings.db_path) == 1  # written once, then resting for 60 s
    await client.close()
    assert stored_seq(settings.db_path) == 5
    again = await aiohttp_client(livecam.create_app(settings))
    assert await (await again.get("/live.jpeg")).read() == frames[-1]


def test_a_clean_stop_keeps_the_epoch_and_an_unclean_one_changes_it(tmp_path):
    db_path = tmp_path / "x.db"
    store = livecam.FrameStore(db_path, 0.01)
    epoch, _ = store.start().result(5)
    assert meta(db_path)["clean"] == "0"  # while running
    store.close()
    assert meta(db_path)["clean"] == "1"
    running = livecam.FrameStore(db_path, 0.01)
    assert running.start().result(5)[0] == epoch
    # As if `running` had been killed: its close() has not run, the database says unclean.
    third = livecam.FrameStore(db_path, 0.01)
    assert third.start().result(5)[0] != epoch
    third.close()
    running.close()


async def test_a_failed_write_is_retried_and_a_stop_after_it_changes_the_epoch(
        aiohttp_client, tmp_path, auth):
    import sqlite3

    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                persist_interval=0.05)
    client = await aiohttp_client(livecam.create_app(settings))
    epoch = (await (await client.get("/status")).json())["epoch"]
    await client.post("/upload", data=make_jpeg(), headers=auth)
    await asyncio.sleep(0.3)
    with contextlib.closing(sqlite3.connect(settings.db_path)) as db:  # the disk "fails"
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON frames "
                   "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
        db.commit()
    await client.post("/upload", data=make_jpeg(), headers=auth)
    await asyncio.sleep(0.3)
    assert stored_seq(settings.db_path) == 1
    await client.close()  # seq 2 was served but never stored: not a clean stop
    assert meta(settings.db_path)["clean"] == "0"
    again = await aiohttp_client(livecam.create_app(settings))
    response = await again.get("/live.jpeg")
    assert response.headers["X-Frame-Seq"] == "1"
    assert not response.headers["ETag"].startswith(f'"{epoch}-')


# --- the rest of the surface ---------------------------------------------------------------


async def test_status_reports_each_camera(client, auth):
    await client.post("/upload", data=make_jpeg(100, 50), headers=auth)
    status = await (await client.get("/status")).json()
    assert status["uptime"] >= 0 and status["epoch"]
    camera = status["cameras"]["default"]
    assert camera["seq"] == 1 and camera["width"] == 100 and camera["height"] == 50
    assert {"timestamp", "age", "bytes", "fps", "viewers"} <= camera.keys()


async def test_page_is_served_with_security_headers_and_test_redirects(client):
    response = await client.get("/")
    assert response.status == 200
    assert "text/html" in response.headers["Content-Type"]
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    redirect = await client.get("/test", allow_redirects=False)
    assert redirect.status == 302 and redirect.headers["Location"] == "/"


async def test_password_never_reaches_the_logs(aiohttp_client, settings, caplog):
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(livecam.create_app(settings))
    await client.post(f"/?password={PASSWORD}", data=make_jpeg())
    await client.post(f"/upload?x=1&password={PASSWORD}", data=b"junk")
    await client.post("/upload", data=make_jpeg(),
                      headers={"Authorization": f"Bearer {PASSWORD}",
                               "Referer": f"http://x/?password={PASSWORD}"})
    assert "POST /?password=REDACTED" in caplog.text
    assert PASSWORD not in caplog.text


async def test_the_access_log_leaves_out_frames_that_went_well(aiohttp_client, settings,
                                                               caplog, auth):
    caplog.set_level(logging.INFO)
    client = await aiohttp_client(livecam.create_app(settings))
    await client.post("/upload", data=make_jpeg(), headers=auth)
    await client.get("/live.jpeg")
    await client.get("/status")
    await client.post("/upload", data=b"junk", headers=auth)
    lines = [r.getMessage() for r in caplog.records if r.name == "livecam.access"]
    assert len(lines) == 2
    assert '"GET /status ' in lines[0] and '"POST /upload ' in lines[1] and " 415 " in lines[1]


def test_sigterm_answers_held_long_polls_and_flushes_the_frame(tmp_path):
    import urllib.request

    db_path = tmp_path / "x.db"
    with ServerProcess(db_path, "--persist-interval", "60") as server:
        for i in range(3):
            request = urllib.request.Request(
                server.url + "/upload", data=make_jpeg(color=(i, 0, 0)), method="POST",
                headers={"Authorization": f"Bearer {PASSWORD}"})
            urllib.request.urlopen(request, timeout=5).read()

        async def hold_then_stop() -> tuple[list[int], float]:
            async with aiohttp.ClientSession() as session:
                polls = [asyncio.ensure_future(
                    session.get(server.url + "/next.jpeg?timeout=60")) for _ in range(5)]
                await asyncio.sleep(0.5)
                started = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                responses = await asyncio.wait_for(asyncio.gather(*polls), 10)
                return [r.status for r in responses], time.monotonic() - started

        statuses, _ = asyncio.run(hold_then_stop())
        assert statuses == [503] * 5
        assert server.process.wait(10) == 0
    with ServerProcess(db_path) as again:
        with urllib.request.urlopen(again.url + "/live.jpeg", timeout=5) as response:
            assert response.headers["X-Frame-Seq"] == "3"
        again.stop()


def test_without_a_password_one_is_generated_beside_the_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LIVECAM_PASSWORD", "PASSWORD")}
    db_path = tmp_path / "cam.db"
    with ServerProcess(db_path, env=env) as server:
        server.stop()
    secret_file = tmp_path / "cam.db.password"
    password = secret_file.read_text().strip()
    assert len(password) >= 24
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    log = server.log()
    assert str(secret_file) in log and "uploader.py --url" in log
    assert password not in log


async def test_metrics_are_prometheus_text_per_camera(client, auth):
    await client.post("/cams/yard/upload", data=make_jpeg(), headers=auth)
    await client.get("/cams/yard/live.jpeg")
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    lines = (await response.text()).splitlines()
    assert 'livecam_frame_seq{camera="yard"} 1' in lines
    assert 'livecam_frames_served_total{camera="yard"} 1' in lines
    assert "# TYPE livecam_viewers gauge" in lines


def test_demo_camera_feeds_the_server_through_the_upload_endpoint(tmp_path):
    import json
    import urllib.request

    def default_camera(server: ServerProcess) -> dict:
        with urllib.request.urlopen(server.url + "/status", timeout=5) as response:
            return json.load(response)["cameras"].get("default", {})

    with ServerProcess(tmp_path / "demo.db", "--demo") as server:
        for _ in range(150):  # the demo sends a frame a second while nobody watches
            if default_camera(server).get("seq", 0) >= 3:
                break
            time.sleep(0.1)
        camera = default_camera(server)
        assert camera["seq"] >= 3
        assert (camera["width"], camera["height"]) == (1280, 720)
        assert server.stop() == 0
    assert "listening on" in server.log()


# --- hostile or unusual requests -------------------------------------------------------------


async def raw_exchange(client, request: bytes) -> bytes:
    """Send raw bytes and read what the server answers first (no body follows them)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_expect_100_continue_checks_password_and_size_before_the_body(client):
    head = ("POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            "Content-Length: {length}\r\nAuthorization: Bearer {password}\r\n\r\n")
    wrong = await raw_exchange(client, head.format(length=1000, password="nope").encode())
    assert wrong.startswith(b"HTTP/1.1 401")
    huge = await raw_exchange(client, head.format(length=10**9, password=PASSWORD).encode())
    assert huge.startswith(b"HTTP/1.1 413")
    fine = await raw_exchange(client, head.format(length=1000, password=PASSWORD).encode())
    assert fine.startswith(b"HTTP/1.1 100 Continue")


async def test_a_password_that_is_not_utf8_is_a_401_not_a_crash(client):
    answer = await raw_exchange(client, b"POST /upload HTTP/1.1\r\nHost: x\r\n"
                                        b"Authorization: Bearer \xff\xfe\r\n"
                                        b"Content-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401")


async def test_multipart_that_fits_the_limit_is_accepted_and_broken_multipart_is_400(
        aiohttp_client, tmp_path, auth):
    jpeg = make_jpeg(120, 90, comment=os.urandom(15_000))
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                max_frame_bytes=len(jpeg) + 10)
    client = await aiohttp_client(livecam.create_app(settings))
    form = aiohttp.FormData()
    form.add_field("frame", jpeg, filename="x.jpg", content_type="image/jpeg")
    assert (await client.post("/upload", data=form, headers=auth)).status == 200
    broken = {**auth, "Content-Type": "multipart/form-data"}  # no boundary
    response = await client.post("/upload", data=b"garbage", headers=broken)
    assert response.status == 400 and "multipart" in await response.text()


async def test_odd_widths_and_boxes_are_client_errors(client, auth):
    await client.post("/upload", data=make_jpeg(1280, 720), headers=auth)
    assert (await client.get("/live.jpeg?width=%C2%B2")).status == 400  # "²" is a digit too
    assert (await client.get("/live" + "9" * 5000 + "x1.jpeg")).status == 404


async def test_a_bad_width_on_a_long_poll_is_400_before_any_wait(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    response = await client.get("/next.jpeg?after=1&timeout=30&width=abc")
    assert response.status == 400


async def test_next_without_after_is_not_for_shared_caches(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    waiting = asyncio.ensure_future(client.get("/next.jpeg?timeout=5"))
    await asyncio.sleep(0.1)
    await client.post("/upload", data=make_jpeg(), headers=auth)
    assert (await waiting).headers["Cache-Control"] == "no-cache"


async def test_allow_origin_covers_frames_timeouts_errors_and_preflight(aiohttp_client,
                                                                        tmp_path, auth):
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                allow_origin="https://dash.example")
    client = await aiohttp_client(livecam.create_app(settings))
    assert (await client.get("/live.jpeg")).headers["Access-Control-Allow-Origin"] == \
        "https://dash.example"  # the 503 before any frame
    await client.post("/upload", data=make_jpeg(), headers=auth)
    frame = await client.get("/live.jpeg")
    assert "X-Frame-Age" in frame.headers["Access-Control-Expose-Headers"]
    timeout = await client.get("/next.jpeg?after=1&timeout=0.1")
    assert timeout.status == 204 and timeout.headers["Access-Control-Allow-Origin"]
    preflight = await client.options("/next.jpeg", headers={
        "Origin": "https://dash.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "if-none-match"})
    assert preflight.status == 204
    assert "If-None-Match" in preflight.headers["Access-Control-Allow-Headers"]


async def test_encoded_passwords_and_log_record_fields_are_redacted(aiohttp_client, settings,
                                                                    caplog):
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(livecam.create_app(settings))
    await client.post(f"/?pass%77ord={PASSWORD}", data=b"junk")
    await client.post(f"/?password={PASSWORD}", data=b"junk",
                      headers={"Referer": f"http://x/?password%3D{PASSWORD}"})
    records = [r for r in caplog.records if r.name == "livecam.access"]
    assert len(records) == 2
    for record in records:
        assert PASSWORD not in record.getMessage()
        assert PASSWORD not in str(vars(record))


async def test_the_root_page_shows_the_one_camera_whatever_its_name(client, auth):
    await client.post("/cams/porch/upload", data=make_jpeg(), headers=auth)
    assert 'data-camera="porch"' in await (await client.get("/")).text()


async def test_a_jpeg_padded_with_fill_bytes_is_refused_quickly(client, auth):
    jpeg = make_jpeg()
    padded = jpeg[:2] + b"\xff" * 1_000_000 + jpeg[2:]
    response = await client.post("/upload", data=io.BytesIO(padded), headers=auth)
    assert response.status == 400
