"""Several cameras on one server, and resized variants of their frames."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from support import PASSWORD, make_jpeg

import livecam


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()
        return image.size


# --- several cameras -----------------------------------------------------------------------


async def test_a_camera_appears_on_its_first_upload_and_has_every_route(client, auth):
    jpeg = make_jpeg(color=(0, 200, 0))
    response = await client.post("/cams/garden/upload", data=jpeg, headers=auth)
    assert (await response.json())["seq"] == 1
    assert await (await client.get("/cams/garden/live.jpeg")).read() == jpeg
    polled = await client.get("/cams/garden/next.jpeg?after=0")
    assert polled.headers["X-Frame-Seq"] == "1" and await polled.read() == jpeg
    page = await client.get("/cams/garden/")
    assert page.status == 200 and "garden" in await page.text()
    redirect = await client.get("/cams/garden", allow_redirects=False)
    assert redirect.status in (301, 302) and redirect.headers["Location"] == "/cams/garden/"
    status = await (await client.get("/status")).json()
    assert set(status["cameras"]) == {"garden"}


async def test_cameras_never_see_each_others_frames(client, auth):
    garden, door = make_jpeg(color=(0, 200, 0)), make_jpeg(color=(0, 0, 200))
    await client.post("/cams/garden/upload", data=garden, headers=auth)
    await client.post("/cams/door/upload", data=door, headers=auth)
    waiting_door = asyncio.ensure_future(client.get("/cams/door/next.jpeg?timeout=1"))
    await asyncio.sleep(0.1)
    await client.post("/cams/garden/upload", data=garden, headers=auth)
    assert (await waiting_door).status == 204  # garden's frame did not wake door's viewer
    assert await (await client.get("/cams/door/live.jpeg")).read() == door
    assert await (await client.get("/cams/garden/live.jpeg")).read() == garden
    assert (await client.get("/live.jpeg")).status == 503  # `default` never uploaded


@pytest.mark.parametrize("name", ["Garden", "-x", "a" * 33, "a.b", "caf%C3%A9", "a%20b"])
async def test_bad_camera_names_are_400(client, auth, name):
    response = await client.post(f"/cams/{name}/upload", data=make_jpeg(), headers=auth)
    assert response.status == 400
    assert "camera name" in await response.text()
    assert (await client.get(f"/cams/{name}/live.jpeg")).status == 400


async def test_a_camera_that_never_uploaded_is_404_on_every_viewing_route(client):
    for path in ("live.jpeg", "next.jpeg", "live320x240.jpeg", ""):
        response = await client.get(f"/cams/nobody/{path}")
        assert response.status == 404, path
        assert "nobody" in await response.text()
    page = await client.get("/cams/nobody/")  # still says how to start that camera
    assert "--camera nobody" in await page.text()


async def test_the_camera_cap_is_403_and_existing_cameras_keep_working(aiohttp_client,
                                                                       tmp_path, auth):
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD, max_cameras=3)
    client = await aiohttp_client(livecam.create_app(settings))
    for name in ("a", "b", "c"):  # `default` counts only once it uploads
        assert (await client.post(f"/cams/{name}/upload", data=make_jpeg(),
                                  headers=auth)).status == 200
    response = await client.post("/cams/d/upload", data=make_jpeg(), headers=auth)
    assert response.status == 403
    assert "at most 3" in await response.text()
    assert (await client.post("/upload", data=make_jpeg(), headers=auth)).status == 403
    assert (await client.post("/cams/a/upload", data=make_jpeg(), headers=auth)).status == 200
    await client.close()

    fewer = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD, max_cameras=1)
    restarted = await aiohttp_client(livecam.create_app(fewer))  # starts despite the lower cap
    assert (await restarted.get("/cams/c/live.jpeg")).status == 200
    assert (await restarted.post("/cams/e/upload", data=make_jpeg(), headers=auth)).status == 403


async def test_per_camera_passwords(aiohttp_client, tmp_path):
    settings = livecam.Settings(db_path=tmp_path / "x.db", password=PASSWORD,
                                camera_passwords={"door": "door-secret"})
    client = await aiohttp_client(livecam.create_app(settings))
    bearer = {"Authorization": f"Bearer {PASSWORD}"}
    assert (await client.post("/cams/door/upload", data=make_jpeg(),
                              headers=bearer)).status == 401
    door = {"Authorization": "Bearer door-secret"}
    assert (await client.post("/cams/door/upload", data=make_jpeg(), headers=door)).status == 200
    assert (await client.post("/cams/yard/upload", data=make_jpeg(), headers=door)).status == 401
    assert (await client.post("/cams/yard/upload", data=make_jpeg(),
                              headers=bearer)).status == 200


async def test_several_cameras_survive_a_restart(aiohttp_client, settings, auth):
    first = await aiohttp_client(livecam.create_app(settings))
    frames = {name: make_jpeg(color=(i * 60, 0, 0)) for i, name in enumerate(("a", "b", "c"))}
    for name, jpeg in frames.items():
        for _ in range(2):
            await first.post(f"/cams/{name}/upload", data=jpeg, headers=auth)
    await first.close()
    second = await aiohttp_client(livecam.create_app(settings))
    for name, jpeg in frames.items():
        response = await second.get(f"/cams/{name}/live.jpeg")
        assert await response.read() == jpeg and response.headers["X-Frame-Seq"] == "2"


async def test_root_is_a_grid_once_there_are_several_cameras(client, auth):
    await client.post("/upload", data=make_jpeg(), headers=auth)
    single = await (await client.get("/")).text()
    await client.post("/cams/yard/upload", data=make_jpeg(), headers=auth)
    grid = await (await client.get("/")).text()
    assert single != grid
    assert "/cams/yard/" in grid and "yard" not in single


# --- resized variants ----------------------------------------------------------------------


@pytest.mark.parametrize(("query", "size"), [("?width=320", (320, 180)),
                                             ("?width=160", (160, 90)),
                                             ("?width=1920", (1280, 720))])
async def test_width_variants_keep_the_aspect_ratio(client, auth, query, size):
    await client.post("/upload", data=make_jpeg(1280, 720), headers=auth)
    response = await client.get("/live.jpeg" + query)
    assert response.status == 200
    assert decoded_size(await response.read()) == size
    assert response.headers["X-Frame-Seq"] == "1"


async def test_the_tutorial_box_form_fits_the_largest_allowed_width(client, auth):
    await client.post("/upload", data=make_jpeg(1280, 720), headers=auth)
    assert decoded_size(await (await client.get("/live800x600.jpeg")).read()) == (800, 450)
    assert decoded_size(await (await client.get("/live700x300.jpeg")).read()) == (480, 270)
    too_small = await client.get("/live100x100.jpeg")
    assert too_small.status == 400 and "too small" in await too_small.text()


@pytest.mark.parametrize("width", ["abc", "0", "100000", "333", "-320", "3e2"])
async def test_widths_outside_the_allowed_set_are_400(client, auth, width):
    await client.post("/upload", data=make_jpeg(1280, 720), headers=auth)
    response = await client.get(f"/live.jpeg?width={width}")
    assert response.status == 400
    assert "160,320" in await response.text()


async def test_concurrent_requests_share_one_variant_per_frame_and_size(client, auth):
    noisy = make_jpeg(1280, 720, noise=True)  # slow enough to resize that requests overlap
    await client.post("/upload", data=io.BytesIO(noisy), headers=auth)
    responses = await asyncio.gather(*(client.get("/live.jpeg?width=320") for _ in range(20)))
    bodies = {await response.read() for response in responses}
    assert len(bodies) == 1
    status = await (await client.get("/status")).json()
    assert status["cameras"]["default"]["variants_made"] == 1
    await client.get("/live.jpeg?width=640")
    await client.post("/upload", data=make_jpeg(1280, 720), headers=auth)
    await client.get("/live.jpeg?width=320")
    status = await (await client.get("/status")).json()
    assert status["cameras"]["default"]["variants_made"] == 3


async def test_long_poll_variants_and_their_etags(client, auth):
    await client.post("/cams/yard/upload", data=make_jpeg(1280, 720), headers=auth)
    waiting = asyncio.ensure_future(client.get("/cams/yard/next.jpeg?width=480&timeout=5"))
    await asyncio.sleep(0.1)
    await client.post("/cams/yard/upload", data=make_jpeg(1280, 720), headers=auth)
    response = await waiting
    assert decoded_size(await response.read()) == (480, 270)
    assert response.headers["X-Frame-Seq"] == "2"
    original = await client.get("/cams/yard/live.jpeg")
    assert response.headers["ETag"] != original.headers["ETag"]
