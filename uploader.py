#!/usr/bin/env python3
"""uploader.py: push JPEG frames to a livecam server, forever, from a Raspberry Pi or anything.

    LIVECAM_PASSWORD=... python uploader.py --url http://HOST:8080 [--source demo]

One file that can be copied to a Pi on its own; it never imports livecam.py. It owns every frame
source: the Pi camera (picamera2), a demo picture drawn with Pillow (livecam.py --demo uses it)
and a folder of JPEG files. Capture and upload are decoupled: the newest captured frame is the
one sent, older ones are dropped, never queued. Uploads go through one keep-alive aiohttp
session; failures are retried forever with capped backoff; nobody watching means --idle-fps.

Sections, in the order a frame travels:
1. options and command line;
2. frame sources: demo, files, Pi camera (and its timestamp overlay);
3. the hand-over: pace (how fast to capture) and the newest-frame slot;
4. upload: transports (a POST per frame, or one WebSocket), retries, status line;
5. run() and main().
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import importlib
import importlib.util
import io
import ipaddress
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar, Protocol

import aiohttp
from PIL import Image, ImageDraw, ImageFont
from yarl import URL

log = logging.getLogger("uploader")

#: Exit status when retrying cannot help (wrong password, bad options): systemd's
#: RestartPreventExitStatus=2 then stops restarting the service.
EXIT_CONFIG = 2
EXIT_SOURCE_FAILED = 1

#: The server's rule for camera names (livecam.py's CAMERA_NAME), checked before the first upload.
CAMERA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

PICAMERA2_MISSING = (
    "picamera2 is not installed. On a Raspberry Pi: `sudo apt install python3-picamera2`, "
    "and if you use a virtual environment, make it with `python3 -m venv --system-site-packages`"
    " so it sees that package (picamera2 cannot be installed with pip on its own)."
)


# ---------------------------------------------------------------------------
# 1. options and command line
# ---------------------------------------------------------------------------


@dataclass
class Options:
    """Everything the uploader is told; every command-line flag has a field, same defaults.

    `--password-file` and LIVECAM_PASSWORD both end up in `password`.
    """

    url: str
    password: str
    camera: str | None = None
    source: str = "auto"  # auto | picamera | demo | files:GLOB
    fps: float = 10  # 0: as fast as the source goes
    idle_fps: float = 1
    width: int = 1280
    height: int = 720
    quality: int = 80
    transport: str = "http"  # http: a POST per frame; ws: one lasting WebSocket
    hflip: bool = False
    vflip: bool = False
    rotate: int = 0
    timestamp: bool = False
    quiet: bool = False
    bench: float | None = None  # seconds of capture without uploading
    timeout: float = 10.0  # per upload, connecting included
    max_backoff: float = 30.0
    status_interval: float = 5.0


class ConfigError(Exception):
    """A problem retrying cannot fix: the user has to change a flag, a file or the camera setup."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uploader.py",
        description="Push JPEG frames to a livecam server. The upload password comes from "
        "LIVECAM_PASSWORD or --password-file, never from the command line.",
        epilog="Exit status 2 means retrying cannot help (wrong password or address, bad "
        "options); 1 that the frame source failed (a restart may help).",
    )
    default = Options(url="", password="")
    add = parser.add_argument
    add("--url", help="the livecam server, e.g. http://192.168.1.20:8080 (not needed with --bench)")
    add("--camera", metavar="NAME", help="upload to /cams/NAME/upload instead of /upload")
    add("--source", default=default.source, metavar="SOURCE",
        help="picamera (the Pi camera, via picamera2), demo (a moving test picture), "
        "files:GLOB (cycle through existing JPEG files, sent byte for byte), or auto: "
        "picamera when picamera2 is installed (default: %(default)s)")
    add("--fps", type=float, default=default.fps, metavar="FPS",
        help="frames per second while someone watches; 0: as fast as the source goes "
        "(default: %(default)s)")
    add("--idle-fps", type=float, default=default.idle_fps, metavar="FPS",
        help="frames per second while the server reports no viewers (default: %(default)s)")
    add("--width", type=int, default=default.width, metavar="PIXELS",
        help="frame width (default: %(default)s)")
    add("--height", type=int, default=default.height, metavar="PIXELS",
        help="frame height (default: %(default)s)")
    add("--quality", type=int, default=default.quality, metavar="Q",
        help="JPEG quality 1-95 (default: %(default)s)")
    add("--transport", choices=("http", "ws"), default=default.transport,
        help="http: one POST per frame (default); ws: one lasting WebSocket to /upload/ws, "
        "a message per frame (same retries, same answers)")
    add("--hflip", action="store_true", help="mirror left-right (the camera's own transform)")
    add("--vflip", action="store_true", help="flip upside down (the camera's own transform)")
    add("--rotate", type=int, choices=(0, 180), default=default.rotate,
        help="rotate by 180 degrees (the camera's own transform)")
    add("--timestamp", action="store_true",
        help="draw the date and time on each frame before it is encoded")
    add("--quiet", action="store_true", help="no status line every few seconds")
    add("--password-file", type=Path, metavar="FILE",
        help="read the upload password from FILE instead of LIVECAM_PASSWORD")
    add("--bench", type=float, nargs="?", const=5.0, metavar="SECONDS",
        help="capture for SECONDS (default 5) without uploading, then print the capture rate, "
        "frame size and CPU per frame")
    add("--timeout", type=float, default=default.timeout, metavar="SECONDS",
        help="seconds one upload may take, connecting included (default: %(default)s)")
    add("--max-backoff", type=float, default=default.max_backoff, metavar="SECONDS",
        help="longest wait between retries while the server is unreachable (default: %(default)s)")
    add("--status-interval", type=float, default=default.status_interval, metavar="SECONDS",
        help="seconds between status lines (default: %(default)s)")
    return parser


def options_from_args(argv: list[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bench is None and not args.url:
        parser.error("--url is required (or --bench to measure the source alone)")
    password = ""
    if args.password_file:
        try:
            password = args.password_file.read_text().strip()
        except OSError as error:
            parser.error(f"cannot read --password-file: {error}")
    else:
        password = os.environ.get("LIVECAM_PASSWORD", "")
    if not password and args.bench is None:
        parser.error("no upload password: set LIVECAM_PASSWORD or use --password-file FILE")
    fields = vars(args)
    del fields["password_file"]
    options = Options(password=password, **{**fields, "url": args.url or ""})
    try:
        check_options(options)
    except ConfigError as error:
        parser.error(str(error))
    return options


def check_options(options: Options) -> None:
    """Reject values no source can honour, with what is allowed."""
    if options.fps < 0 or options.idle_fps <= 0:
        raise ConfigError("--fps must be 0 (uncapped) or more, --idle-fps more than 0")
    if options.width < 16 or options.height < 16:
        raise ConfigError("--width and --height must be at least 16")
    if not 1 <= options.quality <= 95:
        raise ConfigError("--quality must be between 1 and 95")
    if options.rotate not in (0, 180):
        raise ConfigError("--rotate must be 0 or 180")
    if options.camera is not None and not CAMERA_NAME.fullmatch(options.camera):
        raise ConfigError(f"--camera {options.camera!r}: use 1-32 of a-z 0-9 _ -, "
                          "starting with a letter or digit")
    if options.transport not in ("http", "ws"):
        raise ConfigError(f"--transport {options.transport!r}: use http or ws")
    if options.bench is None and URL(options.url).scheme not in ("http", "https"):
        raise ConfigError(f"--url must start with http:// or https://, not {options.url!r}")


# ---------------------------------------------------------------------------
# 2. frame sources
# ---------------------------------------------------------------------------

Deliver = Callable[[bytes], None]


class Source(Protocol):
    name: str  # for messages: demo, files:GLOB, picamera

    async def run(self, deliver: Deliver, pace: Pace) -> None:
        """Capture at `pace`, hand each frame to `deliver` on the event loop; until cancelled."""


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at `size`; older Pillow (Bookworm's 9.4) has one size only."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


async def capture_paced(capture: Callable[[], Awaitable[bytes]], deliver: Deliver,
                        pace: Pace) -> None:
    """Call `capture` at the pace's rate."""
    due = asyncio.get_running_loop().time()
    while True:
        deliver(await capture())
        due = await pace.wait_next(due)


class DemoSource:
    """A moving test picture drawn with Pillow: clock, frame counter, a bouncing ball.

    `render()` draws and encodes one frame (blocking); `run()` does it off the event loop.
    """

    name = "demo"

    def __init__(self, width: int = 1280, height: int = 720, quality: int = 80,
                 hflip: bool = False, vflip: bool = False) -> None:
        self.width, self.height, self.quality = width, height, quality
        self.hflip, self.vflip = hflip, vflip
        self.count = 0
        self._background = self._draw_background()
        self._big = load_font(max(10, height // 6))
        self._small = load_font(max(8, height // 20))

    def _draw_background(self) -> Image.Image:
        image = Image.linear_gradient("L").resize((self.width, self.height))
        image = Image.merge("RGB", (image.point(lambda v: v // 4),
                                    image.point(lambda v: 40 + v // 5),
                                    image.point(lambda v: 90 + v // 3)))
        draw = ImageDraw.Draw(image)
        step = max(8, self.width // 16)
        for x in range(0, self.width, step):
            draw.line([(x, 0), (x, self.height)], fill=(70, 90, 130))
        for y in range(0, self.height, step):
            draw.line([(0, y), (self.width, y)], fill=(70, 90, 130))
        return image

    def render(self) -> bytes:
        self.count += 1
        now = time.time()
        image = self._background.copy()
        draw = ImageDraw.Draw(image)
        radius = max(4, self.height // 10)
        travel = self.width - 2 * radius
        phase = (now / 4) % 2  # across and back in 4 s each way
        x = radius + travel * (phase if phase < 1 else 2 - phase)
        y = self.height * 0.72 + self.height * 0.12 * math.sin(now * 3)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(250, 190, 40))
        margin = max(4, self.height // 30)
        clock = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 10) % 10}"
        draw.text((margin, margin), clock, font=self._big, fill=(255, 255, 255))
        draw.text((margin, margin + self.height // 5),
                  f"frame {self.count}   {time.strftime('%Y-%m-%d')}   livecam demo",
                  font=self._small, fill=(220, 230, 255))
        if self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.vflip:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=self.quality)
        return out.getvalue()

    async def run(self, deliver: Deliver, pace: Pace) -> None:
        await capture_paced(lambda: asyncio.to_thread(self.render), deliver, pace)


class FilesSource:
    """Existing JPEG files (a timelapse folder, say), cycled in name order, sent byte for byte.

    The pattern is matched again after each round, so a growing folder is followed.
    """

    def __init__(self, pattern: str) -> None:
        self.name = f"files:{pattern}"
        self.pattern = os.path.expanduser(pattern)
        if not self._paths():
            raise ConfigError(f"no files match {pattern!r}")

    def _paths(self) -> list[str]:
        return sorted(p for p in glob.glob(self.pattern, recursive=True) if os.path.isfile(p))

    async def run(self, deliver: Deliver, pace: Pace) -> None:
        due = asyncio.get_running_loop().time()
        while True:
            paths = self._paths()
            if not paths:
                raise RuntimeError(f"no files match {self.pattern!r} any more")
            for path in paths:
                try:
                    deliver(await asyncio.to_thread(Path(path).read_bytes))
                except OSError as error:
                    log.warning("skipping %s: %s", path, error)
                due = await pace.wait_next(due)


class NewestFrameOutput(io.BufferedIOBase):
    """The file picamera2's FileOutput writes each JPEG into; keeps only the newest frame.

    `write()` runs on the encoder's thread. It replaces any frame the event loop has not picked
    up yet and wakes the loop once (`call_soon_threadsafe`), so nothing piles up when the loop
    or the network is slower than the camera.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        super().__init__()
        self._loop = loop
        self._deliver = deliver
        self._lock = threading.Lock()
        self._frame: bytes | None = None

    def writable(self) -> bool:
        return True

    def write(self, buffer: bytes) -> int:  # type: ignore[override]
        with self._lock:
            waking = self._frame is None
            self._frame = bytes(buffer)
        if waking:
            with contextlib.suppress(RuntimeError):  # the loop closed while the camera stops
                self._loop.call_soon_threadsafe(self._hand_over)
        return len(buffer)

    def _hand_over(self) -> None:
        with self._lock:
            frame, self._frame = self._frame, None
        if frame is not None:
            self._deliver(frame)


class TimestampOverlay:
    """picamera2 pre_callback: writes date and time into the camera buffer before encoding.

    The text is drawn once per second with Pillow (white on black, so the byte order of the
    pixel format does not matter) and copied row by row into the mapped buffer: no decode or
    re-encode on the Pi, and no numpy needed here.
    """

    BYTES_PER_PIXEL: ClassVar = {"XBGR8888": 4, "XRGB8888": 4, "BGR888": 3, "RGB888": 3}

    def __init__(self, mapped_array: type, height: int) -> None:
        self._mapped_array = mapped_array
        self._font = load_font(max(10, height // 24))
        self._margin = max(2, height // 60)
        self._text = ""
        self._rows: list[bytes] = []

    def _render(self, text: str, bytes_per_pixel: int, max_width: int) -> list[bytes]:
        right, bottom = self._font.getbbox(text)[2:]
        pad = 3
        width = min(max_width, right + 2 * pad)
        strip = Image.new("L", (width, bottom + 2 * pad), 0)
        ImageDraw.Draw(strip).text((pad, pad), text, font=self._font, fill=255)
        strip = strip.convert("RGBX" if bytes_per_pixel == 4 else "RGB")
        data = strip.tobytes()
        row = width * bytes_per_pixel
        return [data[i:i + row] for i in range(0, len(data), row)]

    def __call__(self, request: object) -> None:
        config = request.config["main"]  # type: ignore[attr-defined]
        bytes_per_pixel = self.BYTES_PER_PIXEL.get(config["format"])
        if bytes_per_pixel is None:
            return
        width, height = config["size"]
        text = time.strftime("%Y-%m-%d %H:%M:%S")
        if text != self._text:
            self._rows = self._render(text, bytes_per_pixel, width - 2 * self._margin)
            self._text = text
        stride = config["stride"]
        left = self._margin * bytes_per_pixel
        # The view must be released before MappedArray unmaps the buffer.
        with (self._mapped_array(request, "main", reshape=False) as mapped,
              memoryview(mapped.array).cast("B") as pixels):
            for y, row in enumerate(self._rows[:height - self._margin], start=self._margin):
                start = y * stride + left
                pixels[start:start + len(row)] = row


def import_picamera2() -> SimpleNamespace:
    """The parts of picamera2 we use, imported on demand (it is slow to import, Pi only).

    `JpegEncoder`/`FileOutput` are None where the encoder package cannot be imported (e.g. an
    install without PyAV); the source then falls back to `capture_file`.
    """
    try:
        picamera2 = importlib.import_module("picamera2")
        libcamera = importlib.import_module("libcamera")
    except ModuleNotFoundError as error:
        if error.name in ("picamera2", "libcamera"):
            raise ConfigError(PICAMERA2_MISSING) from None
        raise
    parts = SimpleNamespace(Picamera2=picamera2.Picamera2, MappedArray=picamera2.MappedArray,
                            Transform=libcamera.Transform, JpegEncoder=None, FileOutput=None)
    try:
        parts.JpegEncoder = importlib.import_module("picamera2.encoders").JpegEncoder
        parts.FileOutput = importlib.import_module("picamera2.outputs").FileOutput
    except ImportError as error:
        log.warning("picamera2's encoders cannot be used (%s); capturing with capture_file",
                    error)
    return parts


class PicameraSource:
    """The Raspberry Pi camera through picamera2.

    Video configuration with the camera's own transform for flips; `JpegEncoder(q=quality)`
    (software, every Pi model) writing into a `NewestFrameOutput`; the frame rate is a camera
    control, so an idle camera also encodes less. Where the encoder path is unavailable,
    `capture_file` into a BytesIO at the pace's rate.
    """

    FULL_SPEED_FPS = 30.0  # what --fps 0 means for a camera
    name = "picamera"

    def __init__(self, options: Options) -> None:
        self.options = options

    def _fps(self, fps: float) -> float:
        return fps if fps > 0 else self.FULL_SPEED_FPS

    def _open(self, parts: SimpleNamespace, fps: float) -> object:
        options = self.options
        flip = options.rotate == 180
        camera = parts.Picamera2()
        try:
            config = camera.create_video_configuration(
                main={"size": (options.width, options.height), "format": "XBGR8888"},
                transform=parts.Transform(hflip=int(options.hflip != flip),
                                          vflip=int(options.vflip != flip)),
                controls={"FrameRate": self._fps(fps)},
            )
            camera.configure(config)
            camera.options["quality"] = options.quality  # capture_file's JPEG quality
            if options.timestamp:
                camera.pre_callback = TimestampOverlay(parts.MappedArray, options.height)
        except BaseException:
            camera.close()
            raise
        return camera

    async def run(self, deliver: Deliver, pace: Pace) -> None:
        parts = await asyncio.to_thread(import_picamera2)
        try:
            camera = await asyncio.to_thread(self._open, parts, pace.fps)
        except Exception as error:
            raise RuntimeError(f"cannot open the camera ({describe(error)}); is it connected? "
                               "`rpicam-hello --list-cameras` lists what the Pi sees") from error
        try:
            if parts.JpegEncoder is not None:
                await self._record(camera, parts, deliver, pace)
            else:
                await self._capture(camera, deliver, pace)
        finally:
            await asyncio.to_thread(camera.close)
            log.info("camera closed")

    async def _record(self, camera: object, parts: SimpleNamespace, deliver: Deliver,
                      pace: Pace) -> None:
        output = NewestFrameOutput(asyncio.get_running_loop(), deliver)
        encoder = parts.JpegEncoder(q=self.options.quality)
        await asyncio.to_thread(camera.start_recording, encoder, parts.FileOutput(output))
        try:
            while True:
                fps = await pace.changed()
                camera.set_controls({"FrameRate": self._fps(fps)})
        finally:
            await asyncio.to_thread(camera.stop_recording)

    async def _capture(self, camera: object, deliver: Deliver, pace: Pace) -> None:
        def capture_jpeg() -> bytes:
            out = io.BytesIO()
            camera.capture_file(out, format="jpeg")
            return out.getvalue()

        await asyncio.to_thread(camera.start)
        try:
            await capture_paced(lambda: asyncio.to_thread(capture_jpeg), deliver, pace)
        finally:
            await asyncio.to_thread(camera.stop)


def make_source(options: Options) -> Source:
    """The source `--source` names; ConfigError with the way out when it cannot be had."""
    name = options.source
    if name == "demo":
        return DemoSource(options.width, options.height, options.quality,
                          hflip=options.hflip != (options.rotate == 180),
                          vflip=options.vflip != (options.rotate == 180))
    if name.startswith("files:"):
        if options.hflip or options.vflip or options.rotate or options.timestamp:
            log.warning("files are sent byte for byte: flips, rotation and timestamp are ignored")
        return FilesSource(name.removeprefix("files:"))
    if name in ("picamera", "auto"):
        if importlib.util.find_spec("picamera2") is None:
            hint = " Without a camera, try --source demo." if name == "auto" else ""
            raise ConfigError(PICAMERA2_MISSING + hint)
        return PicameraSource(options)
    raise ConfigError(f"unknown --source {name!r}: use picamera, demo or files:GLOB")


# ---------------------------------------------------------------------------
# 3. the hand-over: pace and the newest-frame slot
# ---------------------------------------------------------------------------


class Pace:
    """How fast to capture now: `fps` while someone watches, `idle_fps` while nobody does."""

    def __init__(self, fps: float, idle_fps: float) -> None:
        self.full = fps
        self.idle = min(idle_fps, fps) if fps > 0 else idle_fps
        self.fps = fps
        self._changed = asyncio.Event()

    def follow(self, viewers: int, why: str = "") -> None:
        fps = self.full if viewers > 0 else self.idle
        if fps != self.fps:
            self.fps = fps
            self._changed.set()
            why = why or (f"{viewers} watching" if viewers else "nobody watching")
            log.info("%s: capturing at %s fps", why, f"{fps:g}" if fps else "full")

    async def changed(self) -> float:
        """Wait for the rate to change; return the new rate."""
        await self._changed.wait()
        self._changed.clear()
        return self.fps

    async def wait_next(self, due: float) -> float:
        """Sleep until the frame after the one due at `due` is due; return its due time.

        Frames keep to a grid, so late wake-ups do not add up and lower the rate; a capture
        more than a frame late starts a new grid rather than catching up with a burst.
        A rate change re-plans at once.
        """
        loop = asyncio.get_running_loop()
        while self.fps > 0:
            interval = 1 / self.fps
            now = loop.time()
            if due + interval <= now:
                return due + interval if now - due < 2 * interval else now
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(due + interval - now):
                    await self._changed.wait()
        return loop.time()


class FrameSlot:
    """Between capture and upload: holds the newest frame only; a newer one replaces it."""

    def __init__(self) -> None:
        self._frame: bytes | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, frame: bytes) -> None:
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    async def take(self) -> bytes:
        await self._ready.wait()
        self._ready.clear()
        frame, self._frame = self._frame, None
        assert frame is not None
        return frame


# ---------------------------------------------------------------------------
# 4. upload
# ---------------------------------------------------------------------------


class CannotRetry(Exception):
    """An answer retrying cannot change (wrong password, wrong URL); says what to fix."""


class ServerTrouble(Exception):
    """The server answered, but not with a frame accepted or rejected: worth retrying."""


@dataclass
class UploadStats:
    sent: int = 0
    sent_bytes: int = 0
    rtt: float | None = None
    viewers: int | None = None
    seq: int | None = None
    last_error: str = "none"


def upload_url(options: Options) -> URL:
    base = URL(options.url)
    return (base / "cams" / options.camera / "upload") if options.camera else base / "upload"


def backoff_delay(failures: int, cap: float) -> float:
    """Exponential from 0.5 s, capped, with jitter so many cameras do not retry in step."""
    ceiling = min(cap, 0.5 * 2 ** min(failures - 1, 16))
    return random.uniform(ceiling / 2, ceiling)


def describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


class Transport(Protocol):
    """How frames reach the server; everything else (retries, stats, idle) is the Uploader's.

    `send()` returns the server's answer in the WebSocket's JSON shape: {"seq", "viewers", ...}
    when the frame was accepted, {"error", "status"} when it was not; failures to get an
    answer are raised (aiohttp errors, TimeoutError, ServerTrouble).
    """

    url: URL

    async def send(self, frame: bytes) -> object: ...

    async def close(self) -> None: ...


class HttpTransport:
    """One POST per frame, over the session's keep-alive connection."""

    def __init__(self, session: aiohttp.ClientSession, options: Options) -> None:
        self.session = session
        self.url = upload_url(options)
        self.headers = {"Authorization": f"Bearer {options.password}",
                        "Content-Type": "image/jpeg"}

    async def send(self, frame: bytes) -> object:
        async with self.session.post(self.url, data=frame, headers=self.headers,
                                     allow_redirects=False) as response:
            if response.status == 200:
                return await response.json(content_type=None)
            text = (await response.text()).strip()
            return {"error": text.splitlines()[0] if text else response.reason,
                    "status": response.status, "location": response.headers.get("Location")}

    async def close(self) -> None:
        """The session owns the connection."""


class WebSocketTransport:
    """One lasting WebSocket to /upload/ws: a binary message per frame, a JSON answer to each.

    Connects on the first frame and again on the first frame after any failure, so the
    Uploader's backoff decides when to reconnect. The server closes with 1001 when it shuts
    down (retried like a refused connection) and 1009 when a frame is over its limit
    (answered like HTTP's 413).
    """

    def __init__(self, session: aiohttp.ClientSession, options: Options) -> None:
        self.session = session
        self.timeout = options.timeout
        url = upload_url(options)
        self.url = url.with_scheme({"http": "ws", "https": "wss"}[url.scheme]) / "ws"
        self.headers = {"Authorization": f"Bearer {options.password}"}
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def send(self, frame: bytes) -> object:
        try:
            async with asyncio.timeout(self.timeout):
                if self._ws is None:
                    self._ws = await self.session.ws_connect(
                        self.url, headers=self.headers, compress=0, heartbeat=30.0,
                        timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
                await self._ws.send_bytes(frame)
                message = await self._ws.receive()
        except aiohttp.WSServerHandshakeError as refused:
            if refused.status != 401:
                raise ServerTrouble(f"{refused.status} at the WebSocket handshake") from None
            return {"error": "wrong password at the WebSocket handshake", "status": 401}
        except BaseException:
            await self.close()
            raise
        if message.type is aiohttp.WSMsgType.TEXT:
            return json.loads(message.data)
        await self.close()
        code = message.data if message.type is aiohttp.WSMsgType.CLOSE else "connection lost"
        if code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
            return {"error": f"frame too large for the WebSocket ({message.extra})",
                    "status": 413}
        if code == aiohttp.WSCloseCode.GOING_AWAY:
            raise ServerTrouble("the server is shutting down")
        raise ServerTrouble(f"the WebSocket closed without an answer ({code})")

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()


class Uploader:
    """Sends frames through its transport and follows the server's answers."""

    def __init__(self, session: aiohttp.ClientSession, options: Options, pace: Pace) -> None:
        self.options = options
        self.pace = pace
        kind = WebSocketTransport if options.transport == "ws" else HttpTransport
        self.transport: Transport = kind(session, options)
        self.url = self.transport.url
        self.stats = UploadStats()
        self._refused: str | None = None

    async def upload(self, frame: bytes) -> None:
        """Send one frame; raise CannotRetry/ServerTrouble, or aiohttp/timeout errors."""
        started = time.monotonic()
        answer = await self.transport.send(frame)
        if not isinstance(answer, dict):
            raise ServerTrouble("the answer to an upload is not livecam's JSON")
        if "error" not in answer:
            self._accepted(answer, len(frame), time.monotonic() - started)
            return
        status = answer.get("status")
        reason = f"{status} {answer['error']}"
        if status == 401:
            raise CannotRetry(f"the server refused the password ({reason}): check "
                              "LIVECAM_PASSWORD or --password-file")
        if isinstance(status, int) and 300 <= status < 400:
            raise CannotRetry(f"the server redirects uploads to "
                              f"{answer.get('location') or '?'} ({status}): "
                              "give that address as --url")
        if status not in (400, 413, 415):
            raise ServerTrouble(reason)
        # This frame was refused; the next one may be fine. Said once per run of refusals.
        if reason != self._refused:
            log.warning("frame of %d bytes refused: %s", len(frame), reason)
        self._refused = self.stats.last_error = reason

    def _accepted(self, answer: dict, size: int, rtt: float) -> None:
        viewers = answer.get("viewers")
        stats = self.stats
        stats.sent, stats.sent_bytes, stats.rtt = stats.sent + 1, stats.sent_bytes + size, rtt
        stats.seq = answer.get("seq")
        stats.viewers = viewers if isinstance(viewers, int) else None
        self._refused = None
        # A server that does not say who watches gets the full rate.
        self.pace.follow(1 if stats.viewers is None else stats.viewers)

    async def upload_forever(self, slot: FrameSlot) -> int:
        """Send the newest frame, again and again; returns only when retrying cannot help."""
        failures = 0
        while True:
            frame = await slot.take()
            try:
                await self.upload(frame)
            except CannotRetry as error:
                log.error("%s; retrying cannot help", error)
                return EXIT_CONFIG
            except (aiohttp.ClientError, TimeoutError, ServerTrouble, ValueError) as error:
                failures += 1
                delay = backoff_delay(failures, self.options.max_backoff)
                message = describe(error)
                if message != self.stats.last_error or failures == 1:
                    log.warning("upload to %s failed: %s; retrying (next in %.1f s)",
                                self.url, message, delay)
                self.stats.last_error = message
                self.pace.follow(0, "server out of reach")
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("uploading again after %d failed attempts", failures)
                failures = 0


async def report_status(stats: UploadStats, slot: FrameSlot, interval: float) -> None:
    """A status line every `interval` seconds: what a person at the Pi wants to know."""
    last_time, last_sent, last_bytes = time.monotonic(), stats.sent, stats.sent_bytes
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        elapsed = max(now - last_time, 1e-6)
        rtt = f"{stats.rtt * 1000:.0f} ms" if stats.rtt is not None else "-"
        log.info("sent %d frames (%.1f fps, %.0f KB/s), dropped %d, rtt %s, viewers %s, "
                 "seq %s, last error: %s",
                 stats.sent, (stats.sent - last_sent) / elapsed,
                 (stats.sent_bytes - last_bytes) / 1024 / elapsed, slot.dropped, rtt,
                 "-" if stats.viewers is None else stats.viewers,
                 "-" if stats.seq is None else stats.seq, stats.last_error)
        last_time, last_sent, last_bytes = now, stats.sent, stats.sent_bytes


async def warn_if_password_exposed(url: str) -> None:
    """The password travels in clear over http://: say so unless the host is on this network."""
    parsed = URL(url)
    if parsed.scheme != "http" or not parsed.host:
        return
    host = parsed.host
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            host, parsed.port, type=socket.SOCK_STREAM), 3)
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        local = not any(address.is_global for address in addresses)
    except (OSError, TimeoutError, ValueError):
        local = host == "localhost" or "." not in host or host.endswith((".local", ".lan",
                                                                          ".home.arpa"))
    if not local:
        log.warning("the upload password goes over plain http:// to %s, which is not on a "
                    "local network: anyone on the way can read it; use https://", host)


# ---------------------------------------------------------------------------
# 5. run() and main()
# ---------------------------------------------------------------------------


async def bench(source: Source, options: Options) -> int:
    """Capture for `options.bench` seconds without uploading; print rate, size, CPU per frame."""
    loop = asyncio.get_running_loop()
    first: list[float] = []
    sizes: list[int] = []

    def count(frame: bytes) -> None:
        if not first:  # start the clocks at the first frame: camera start-up is not capture
            first.extend((loop.time(), time.process_time()))
        else:
            sizes.append(len(frame))

    pace = Pace(options.fps, options.fps or 1)
    try:
        await asyncio.wait_for(source.run(count, pace), options.bench)
    except TimeoutError:
        pass
    except Exception as error:
        log.error("the frame source failed: %s", describe(error))
        return EXIT_CONFIG if isinstance(error, ConfigError) else EXIT_SOURCE_FAILED
    if not sizes:
        print("bench: fewer than two frames captured", file=sys.stderr)
        return EXIT_SOURCE_FAILED
    elapsed = loop.time() - first[0]
    cpu = time.process_time() - first[1]
    print(f"bench: {source.name} {options.width}x{options.height} q{options.quality}: "
          f"{len(sizes)} frames in {elapsed:.1f} s = {len(sizes) / elapsed:.1f} fps, "
          f"{sum(sizes) / len(sizes) / 1024:.1f} KB per frame, "
          f"{cpu / len(sizes) * 1000:.1f} ms CPU per frame "
          f"({cpu / elapsed * 100:.0f}% of one core)")
    return 0


async def run(options: Options) -> int:
    """Capture and upload until cancelled; returns 2 when retrying cannot help.

    Installs no signal handlers (livecam.py --demo runs this in its own loop); cancelling
    closes the camera and the HTTP session before the CancelledError propagates.
    """
    try:
        check_options(options)
        source = make_source(options)
    except ConfigError as error:
        log.error("%s", error)
        return EXIT_CONFIG
    if options.bench is not None:
        return await bench(source, options)
    await warn_if_password_exposed(options.url)
    pace = Pace(options.fps, options.idle_fps)
    slot = FrameSlot()
    timeout = aiohttp.ClientTimeout(total=options.timeout, connect=min(5.0, options.timeout))
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=1)) as session:
        uploader = Uploader(session, options, pace)
        capturing = asyncio.create_task(source.run(slot.put, pace), name="capture")
        uploading = asyncio.create_task(uploader.upload_forever(slot), name="upload")
        tasks = [capturing, uploading]
        if not options.quiet:
            tasks.append(asyncio.create_task(
                report_status(uploader.stats, slot, options.status_interval), name="status"))
        log.info("uploading %s frames to %s", source.name, uploader.url)
        try:
            await asyncio.wait([capturing, uploading], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await uploader.transport.close()
        if uploading.done() and not uploading.cancelled():
            return uploading.result()
        error = capturing.exception()
        if isinstance(error, ConfigError):
            log.error("%s", error)
            return EXIT_CONFIG
        log.error("the frame source failed: %s", describe(error) if error else "it stopped")
        return EXIT_SOURCE_FAILED


async def run_until_signalled(options: Options) -> int:
    """run(), stopped cleanly by SIGINT or SIGTERM (exit status 0)."""
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(run(options))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, running.cancel)
    try:
        return await running
    except asyncio.CancelledError:
        if not running.cancelled():
            raise
        log.info("stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    options = options_from_args(argv)
    logging.basicConfig(level=logging.INFO, format="uploader: %(message)s", stream=sys.stderr)
    return asyncio.run(run_until_signalled(options))


if __name__ == "__main__":
    sys.exit(main())
