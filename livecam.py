"""livecam: a live-cam relay.

A camera pushes JPEG frames over HTTP; the server keeps the newest frame of each camera in
memory, persists it to SQLite so a restart loses nothing, and hands it to any number of
viewers at once (`/live.jpeg`) or by long-poll (`/next.jpeg`).

The file reads in the order a frame travels: settings, the frame model, storage, HTTP,
the application factory, and `main()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import io
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import BodyPartReader, WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.web_log import AccessLogger
from PIL import Image

log = logging.getLogger("livecam")
access_log = logging.getLogger("livecam.access")

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# 1. Settings and command line
# ---------------------------------------------------------------------------

DEFAULT_CAMERA = "default"
CAMERA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # uploader.py checks the same rule
DEFAULT_SIZES = (160, 320, 480, 640, 800, 1024, 1280, 1920)
MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the server is told at start; built from flags and the environment."""

    db_path: Path = Path("livecam.db")
    password: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    demo: bool = False
    access_log: bool = True
    max_frame_bytes: int = 8 * MiB
    persist_interval: float = 1.0
    max_cameras: int = 16
    sizes: tuple[int, ...] = DEFAULT_SIZES
    camera_passwords: Mapping[str, str] = field(default_factory=dict)
    allow_origin: str | None = None
    edge_cache: bool = True
    long_poll_default: float = 30.0
    long_poll_max: float = 60.0
    viewer_window: float = 5.0
    shutdown_timeout: float = 3.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livecam.py",
        description="Relay JPEG frames from a camera to many viewers. The upload password "
        "comes from LIVECAM_PASSWORD (or PASSWORD) or --password-file; with neither, one is "
        "generated next to the database.",
    )
    add = parser.add_argument
    add("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    add("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one)")
    add("--db", type=Path, default=Path("livecam.db"), help="SQLite file for the newest frames")
    add("--demo", action="store_true", help="run a demo camera that uploads a moving clock")
    add("--password-file", type=Path, help="file holding the upload password (first line)")
    add("--no-access-log", action="store_true", help="do not log each request (benchmarks)")
    add("--max-frame-bytes", type=int, default=8 * MiB, help="largest JPEG accepted (bytes)")
    add("--persist-interval", type=float, default=1.0,
        help="write a camera's newest frame to SQLite at most this often (seconds)")
    add("--max-cameras", type=int, default=16, help="how many cameras may exist")
    add("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
        help="widths allowed for resized variants, comma separated")
    add("--camera-password-file", type=Path,
        help="per-camera upload passwords, one 'name:password' per line")
    add("--allow-origin", help="send CORS headers allowing this origin (e.g. https://example.org)")
    add("--no-edge-cache", action="store_true",
        help="forbid shared caches (a CDN or Varnish) from answering /next.jpeg")
    add("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def settings_from_args(args: argparse.Namespace, password: str) -> Settings:
    return Settings(
        db_path=args.db,
        password=password,
        host=args.host,
        port=args.port,
        demo=args.demo,
        access_log=not args.no_access_log,
        max_frame_bytes=args.max_frame_bytes,
        persist_interval=args.persist_interval,
        max_cameras=args.max_cameras,
        sizes=parse_sizes(args.sizes),
        camera_passwords=read_camera_passwords(args.camera_password_file),
        allow_origin=args.allow_origin,
        edge_cache=not args.no_edge_cache,
    )


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SystemExit(f"--sizes must be comma-separated widths, got {text!r}") from None
    if not sizes or sizes[0] < 16 or sizes[-1] > 8192:
        raise SystemExit("--sizes must list widths between 16 and 8192")
    return tuple(sizes)


def resolve_password(password_file: Path | None, db_path: Path) -> tuple[str, Path | None]:
    """The upload password, and the file beside the database when it was generated there.

    Never from argv, where `ps` would show it.
    """
    if password_file is not None:
        return read_secret(password_file), None
    for name in ("LIVECAM_PASSWORD", "PASSWORD"):
        if os.environ.get(name):
            return os.environ[name], None
    generated = db_path.with_name(db_path.name + ".password")
    if generated.exists():
        return read_secret(generated), generated
    password = secrets.token_urlsafe(24)
    generated.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    log.warning("no password given: generated one in %s (mode 0600)", generated.resolve())
    return password, generated


def read_secret(path: Path) -> str:
    try:
        secret = next((line.strip() for line in path.read_text().splitlines() if line.strip()),
                      "")
    except OSError as error:
        raise SystemExit(f"cannot read password file {path}: {error.strerror}") from None
    if not secret:
        raise SystemExit(f"password file {path} is empty")
    return secret


def read_camera_passwords(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    passwords = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not CAMERA_NAME.fullmatch(name.strip()) or not password.strip():
            raise SystemExit(f"{path}:{number}: expected 'name:password'")
        passwords[name.strip()] = password.strip()
    return passwords


# ---------------------------------------------------------------------------
# 2. The frame model
# ---------------------------------------------------------------------------


class FrameRejected(Exception):
    """An upload that is not a usable JPEG; carries the HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class CameraClosed(Exception):
    """The server is shutting down: waiting viewers are released."""


SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                         0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
MAX_SEGMENTS_BEFORE_FRAME_HEADER = 256


def inspect_jpeg(data: bytes) -> tuple[int, int]:
    """Check that `data` is a whole JPEG and return its (width, height) without decoding.

    The size comes from the first frame header before the scan; an EXIF thumbnail lives
    inside an APP1 segment, which the walk skips whole.
    """
    if not data:
        raise FrameRejected(400, "empty upload: send one JPEG image as the body")
    if not data.startswith(b"\xff\xd8"):
        raise FrameRejected(415, "not a JPEG: the body must start with the JPEG SOI marker FFD8")
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise FrameRejected(400, "truncated JPEG: no EOI marker FFD9 at the end")
    i, end = 2, len(data)
    for _ in range(MAX_SEGMENTS_BEFORE_FRAME_HEADER):  # real files need a few dozen
        if i + 4 > end:
            break
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in STANDALONE_MARKERS:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in SOF_MARKERS and i + 9 <= end:
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            if width and height:
                return width, height
            break
        i += 2 + length
    raise FrameRejected(400, "broken JPEG: no frame header with a width and height")


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """What every frame response says besides the frame itself."""

    edge_cache: bool = True


LIVE_CACHE_CONTROL = "no-cache"
EDGE_CACHE_CONTROL = "public, max-age=0, s-maxage=2"


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One JPEG as served: its identity, its bytes, and the headers prepared once for it."""

    seq: int
    epoch: str
    timestamp: float
    jpeg: bytes
    width: int
    height: int
    etag: str
    live_headers: Mapping[str, str]
    next_headers: Mapping[str, str]

    @classmethod
    def create(cls, jpeg: bytes, seq: int, epoch: str, timestamp: float,
               size: tuple[int, int], policy: HeaderPolicy, tag: str = "") -> Frame:
        etag = f'"{epoch}-{seq}{tag}"'
        common = {
            "Content-Type": "image/jpeg",
            "ETag": etag,
            "Last-Modified": formatdate(timestamp, usegmt=True),
            "X-Frame-Seq": str(seq),
            "X-Frame-Timestamp": f"{timestamp:.3f}",
            "X-Content-Type-Options": "nosniff",
        }
        next_cache = EDGE_CACHE_CONTROL if policy.edge_cache else LIVE_CACHE_CONTROL
        return cls(seq, epoch, timestamp, jpeg, size[0], size[1], etag,
                   {**common, "Cache-Control": LIVE_CACHE_CONTROL},
                   {**common, "Cache-Control": next_cache})

    def age_ms(self) -> int:
        return max(0, int((time.time() - self.timestamp) * 1000))


def resize_jpeg(jpeg: bytes, width: int, quality: int = 80) -> tuple[bytes, tuple[int, int]]:
    """Scale a JPEG to `width`, keeping its aspect ratio; draft mode decodes it small and cheap."""
    with Image.open(io.BytesIO(jpeg)) as image:
        height = max(1, round(image.height * width / image.width))
        image.draft("RGB", (width, height))
        small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=quality)
    return out.getvalue(), (width, height)


class Viewers:
    """Who watches a camera: connections that fetched a frame lately or hold a request open.

    A camera reads the count from each upload answer and slows down when it is zero.
    """

    def __init__(self, window: float) -> None:
        self._window = window
        self._last_seen: dict[int, float] = {}
        self._holding: dict[int, int] = {}

    def saw(self, connection: int) -> None:
        self._last_seen[connection] = time.monotonic()

    def holding(self, connection: int) -> Holding:
        """Count a connection while it waits; one that disconnects stops counting at once."""
        return Holding(self, connection)

    def _hold(self, connection: int) -> None:
        self._holding[connection] = self._holding.get(connection, 0) + 1

    def _release(self, connection: int, *, gone: bool) -> None:
        if gone:
            self._last_seen.pop(connection, None)
        else:
            self.saw(connection)
        left = self._holding.pop(connection) - 1
        if left:
            self._holding[connection] = left

    def count(self) -> int:
        cutoff = time.monotonic() - self._window
        for connection in [c for c, seen in self._last_seen.items() if seen < cutoff]:
            del self._last_seen[connection]
        return len(self._holding) + sum(1 for c in self._last_seen if c not in self._holding)


class Holding:
    """`with viewers.holding(connection):` as a slotted object rather than a generator,
    since thousands are held at once and each generator frame costs half a kilobyte."""

    __slots__ = ("_connection", "_viewers")

    def __init__(self, viewers: Viewers, connection: int) -> None:
        self._viewers, self._connection = viewers, connection

    def __enter__(self) -> None:
        self._viewers._hold(self._connection)

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        self._viewers._release(self._connection, gone=error_type is not None)


TIMED_OUT = object()  # what a waiter's future holds when its time ran out


class SharedTimeouts:
    """Ends waits with one timer per tenth of a second, not one timer per waiter.

    Thousands of long-polls each holding an `asyncio.timeout` cost a timer handle and a
    context object apiece; grouped, they share one `call_at`.
    """

    TICK = 0.1

    def __init__(self) -> None:
        self._due: dict[int, set[asyncio.Future]] = {}

    def add(self, waiter: asyncio.Future, delay: float) -> set[asyncio.Future]:
        """Resolve `waiter` with TIMED_OUT after `delay` (rounded up to a tick)."""
        loop = waiter.get_loop()
        tick = math.ceil((loop.time() + delay) / self.TICK)
        due = self._due.get(tick)
        if due is None:
            due = self._due[tick] = set()
            loop.call_at(tick * self.TICK, self._expire, tick)
        due.add(waiter)
        return due

    def _expire(self, tick: int) -> None:
        for waiter in self._due.pop(tick, ()):
            if not waiter.done():
                waiter.set_result(TIMED_OUT)


class Camera:
    """A camera's newest frame and the one wake-up that releases everyone waiting for the next.

    All viewing code asks this object; nothing else holds frames.
    """

    def __init__(self, name: str, policy: HeaderPolicy, viewer_window: float) -> None:
        self.name = name
        self.policy = policy
        self.frame: Frame | None = None
        self.viewers = Viewers(viewer_window)
        self.served = 0
        self.variants_made = 0
        self._closed = False
        # One future per waiter, in a set: a waiter that times out or hangs up leaves in O(1).
        # (One shared future looks cheaper, but every waiter leaving it scans its callback
        # list: 10,000 long-polls timing out together cost a second of CPU.)
        self._waiters: set[asyncio.Future[Frame | None]] = set()
        self._timeouts = SharedTimeouts()
        self._upload_times: deque[float] = deque(maxlen=32)
        self._variants: dict[int, asyncio.Future[Frame]] = {}

    @property
    def next_seq(self) -> int:
        return self.frame.seq + 1 if self.frame else 1

    def publish(self, frame: Frame) -> None:
        """Make `frame` the newest and release every waiter.

        Releasing only sets each waiter's future; each viewer's own task then sends its
        response, so the upload request never writes to viewers.
        """
        self.frame = frame
        self._variants = {}
        self._upload_times.append(time.monotonic())
        self._release(frame)

    def _release(self, frame: Frame | None) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(frame)

    async def wait_for_newer(self, after: int, max_wait: float) -> Frame | None:
        """A frame whose seq is not `after`: at once if there is one, else the next to arrive.

        A viewer ahead of the server (its database was reset) gets the newest frame at once.
        Returns None when `max_wait` seconds pass first.
        """
        frame = self.frame
        if frame is not None and frame.seq != after:
            return frame
        if self._closed:
            raise CameraClosed
        if max_wait <= 0:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        timing_out = self._timeouts.add(waiter, max_wait)
        try:
            frame = await waiter
        finally:
            self._waiters.discard(waiter)
            timing_out.discard(waiter)
        if frame is TIMED_OUT:
            return None
        if frame is None:
            raise CameraClosed
        return frame

    def close(self) -> None:
        """Release every waiter with nothing; used on shutdown."""
        self._closed = True
        self._release(None)

    @property
    def closed(self) -> bool:
        return self._closed

    def upload_fps(self) -> float:
        times = self._upload_times
        if len(times) < 2 or time.monotonic() - times[-1] > 5.0:
            return 0.0
        return round((len(times) - 1) / (times[-1] - times[0]), 2)

    async def variant(self, frame: Frame, width: int) -> Frame:
        """The newest frame scaled to `width`: made once per frame and size, shared by all.

        A viewer woken with an older frame gets the newest one's variant: as right an
        answer for it, and shared instead of computed once more.
        """
        frame = self.frame or frame
        if width >= frame.width:
            return frame
        task = self._variants.get(width)
        if task is None:
            task = asyncio.ensure_future(make_variant(frame, width, self.policy))
            self._variants[width] = task
            self.variants_made += 1
        return await asyncio.shield(task)


async def make_variant(frame: Frame, width: int, policy: HeaderPolicy) -> Frame:
    jpeg, size = await asyncio.to_thread(resize_jpeg, frame.jpeg, width)
    return Frame.create(jpeg, frame.seq, frame.epoch, frame.timestamp, size, policy,
                        tag=f"-w{width}")


class Relay:
    """The cameras of one server, and the one place where a frame is accepted."""

    def __init__(self, settings: Settings, store: FrameStore) -> None:
        self.settings = settings
        self.store = store
        self.epoch = ""
        self.started = time.time()
        self.policy = HeaderPolicy(settings.edge_cache)
        self.cameras: dict[str, Camera] = {}
        self._add(DEFAULT_CAMERA)

    def camera(self, name: str) -> Camera | None:
        return self.cameras.get(name)

    def uploading_camera(self, name: str) -> Camera:
        """The camera a frame goes to; a new one (no frame yet) within `--max-cameras`."""
        camera = self.cameras.get(name)
        if camera is None or camera.frame is None:
            if len(self.cameras_with_frames()) >= self.settings.max_cameras:
                raise FrameRejected(
                    403, f"camera limit reached: at most {self.settings.max_cameras} cameras")
            camera = camera or self._add(name)
        return camera

    def _add(self, name: str) -> Camera:
        camera = self.cameras[name] = Camera(name, self.policy, self.settings.viewer_window)
        return camera

    def restore(self, epoch: str, rows: list[StoredFrame]) -> None:
        self.epoch = epoch
        for row in rows:
            if not CAMERA_NAME.fullmatch(row.camera):
                continue
            camera = self.cameras.get(row.camera) or self._add(row.camera)  # even past the cap
            camera.frame = Frame.create(row.jpeg, row.seq, epoch, row.timestamp,
                                        (row.width, row.height), self.policy)

    def password_for(self, camera: str) -> str:
        return self.settings.camera_passwords.get(camera, self.settings.password)

    def accept(self, camera_name: str, jpeg: bytes) -> tuple[Camera, Frame]:
        """Validate, number, publish and persist one uploaded frame."""
        size = inspect_jpeg(jpeg)
        camera = self.uploading_camera(camera_name)
        frame = Frame.create(jpeg, camera.next_seq, self.epoch, time.time(), size, self.policy)
        camera.publish(frame)
        self.store.save(camera.name, frame)
        return camera, frame

    def cameras_with_frames(self) -> list[Camera]:
        return [camera for camera in self.cameras.values() if camera.frame is not None]

    def close(self) -> None:
        for camera in self.cameras.values():
            camera.close()


# ---------------------------------------------------------------------------
# 3. Storage: SQLite behind the memory
# ---------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    camera TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    jpeg BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredFrame:
    camera: str
    seq: int
    timestamp: float
    width: int
    height: int
    jpeg: bytes


class FrameStore:
    """Keeps the newest frame of each camera in SQLite, written by one thread of its own.

    Latest wins: a frame waiting to be written is replaced by a newer one, and writes happen
    at most every `interval` seconds, so an SD card is not worn out for nothing. `close()`
    always flushes the newest frame.

    The database holds a random epoch; `(epoch, seq)` names one image forever. A start after
    an unclean stop (frames may have been accepted but not written) takes a new epoch, since
    the restored seq may be reused.
    """

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._pending: dict[str, Frame] = {}
        self._closing = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> ThreadFuture[tuple[str, list[StoredFrame]]]:
        """Open the database in the writer thread; the future holds (epoch, stored frames)."""
        opened: ThreadFuture[tuple[str, list[StoredFrame]]] = ThreadFuture()
        self._thread = threading.Thread(target=self._run, args=(opened,),
                                        name="livecam-sqlite", daemon=True)
        self._thread.start()
        return opened

    def save(self, camera: str, frame: Frame) -> None:
        with self._wake:
            self._pending[camera] = frame
            self._wake.notify()

    def close(self) -> None:
        """Flush what is pending and stop the thread (blocking: call it from a thread)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self, opened: ThreadFuture) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path)
            restored = self._open(db)
        except (sqlite3.Error, OSError) as error:
            opened.set_exception(error)
            return
        opened.set_result(restored)
        try:
            while self._write_when_due(db):
                pass
            if not self._pending:  # everything accepted is on disk: the epoch may stay
                with db:
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
        except sqlite3.Error as error:
            log.error("cannot mark %s cleanly closed: %s", self.path, error)
        finally:
            db.close()

    def _open(self, db: sqlite3.Connection) -> tuple[str, list[StoredFrame]]:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-256")  # 256 KiB: frames are written, read only at start
        db.executescript(SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta"))
        epoch = meta.get("epoch")
        if epoch is None or meta.get("clean") != "1":
            epoch = secrets.token_hex(4)
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")
        rows = db.execute(
            "SELECT camera, seq, timestamp, width, height, jpeg FROM frames").fetchall()
        return epoch, [StoredFrame(*row) for row in rows]

    def _write_when_due(self, db: sqlite3.Connection) -> bool:
        """Write what is pending, then rest; False once closing and nothing is left."""
        with self._wake:
            self._wake.wait_for(lambda: self._pending or self._closing)
            batch, self._pending = self._pending, {}
            closing = self._closing
        if batch and not self._write(db, batch):
            with self._wake:  # retried next time, unless a newer frame replaced it
                self._pending = {**batch, **self._pending}
            if closing:
                return False
        if closing:
            return bool(self._pending)
        with self._wake:
            self._wake.wait_for(lambda: self._closing, timeout=self.interval)
        return True

    def _write(self, db: sqlite3.Connection, batch: dict[str, Frame]) -> bool:
        try:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO frames VALUES (?, ?, ?, ?, ?, ?)",
                    [(camera, f.seq, f.timestamp, f.width, f.height, f.jpeg)
                     for camera, f in batch.items()])
        except sqlite3.Error as error:  # keep serving from memory; the next turn retries
            log.error("cannot write frames to %s: %s", self.path, error)
            return False
        return True


# ---------------------------------------------------------------------------
# 4. HTTP: password check, upload, viewing, page, status
# ---------------------------------------------------------------------------

RELAY = web.AppKey("relay", Relay)
SETTINGS = web.AppKey("settings", Settings)

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'self'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
RETRY_AFTER = "2"


class HTTPError(web.HTTPException):
    """An error answer: a status code and one plain-text line saying what was wrong."""

    def __init__(self, status: int, reason: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(text=reason + "\n", headers=headers)


def camera_name(request: web.Request) -> str:
    name = request.match_info.get("camera")
    if name is None:  # an un-prefixed route
        return DEFAULT_CAMERA
    if not CAMERA_NAME.fullmatch(name):
        raise HTTPError(400, "bad camera name: use 1-32 of a-z, 0-9, '_' and '-', "
                              "starting with a letter or digit")
    return name


def connection_id(request: web.Request) -> int:
    """Identifies the viewer's connection: a browser keeps one open while it watches."""
    return id(request.protocol)


def is_authorized(request: web.Request, expected: str) -> bool:
    """Bearer header or the tutorial's `?password=`, compared in constant time."""
    given = request.query.get("password")
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None:
        return False
    return hmac.compare_digest(given.encode(errors="surrogateescape"),
                               expected.encode(errors="surrogateescape"))


def check_password(request: web.Request, camera: str) -> None:
    if not is_authorized(request, request.app[RELAY].password_for(camera)):
        raise HTTPError(401, "wrong or missing password: send 'Authorization: Bearer "
                             "<password>'", {"WWW-Authenticate": 'Bearer realm="livecam"'})


MULTIPART_HEADROOM = 64 * 1024  # a form's boundaries and part headers around the frame


def check_declared_size(request: web.Request, limit: int) -> None:
    """Refuse a body whose Content-Length already says it is too large."""
    if request.content_type == "multipart/form-data":
        limit += MULTIPART_HEADROOM
    if request.content_length is not None and request.content_length > limit:
        raise frame_too_large(request)


def frame_too_large(request: web.Request) -> HTTPError:
    limit = request.app[SETTINGS].max_frame_bytes
    return HTTPError(413, f"frame too large: the limit is {limit} bytes")


async def expect_upload(request: web.Request) -> None:
    """`Expect: 100-continue`: say "continue" only to a camera that may send its body."""
    check_password(request, camera_name(request))
    check_declared_size(request, request.app[SETTINGS].max_frame_bytes)
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise HTTPError(417, "only 'Expect: 100-continue' is understood")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The JPEG from a raw body (any content type) or from a multipart file field."""
    check_declared_size(request, limit)
    too_large = frame_too_large(request)
    if request.content_type != "multipart/form-data":
        return await read_limited(request.content.readany, limit, too_large)
    try:
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.filename is not None:
                return await read_limited(part.read_chunk, limit, too_large)
    except ValueError as error:  # no boundary, or not multipart at all
        raise HTTPError(400, f"broken multipart upload: {error}") from None
    raise HTTPError(400, "multipart upload without a file field: send -F frame=@x.jpg")


async def read_limited(read_chunk, limit: int, too_large: web.HTTPException) -> bytes:
    body = bytearray()
    while chunk := await read_chunk():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def upload(request: web.Request) -> web.Response:
    """Accept one frame: password first, then the body, then validation."""
    relay = request.app[RELAY]
    name = camera_name(request)
    check_password(request, name)
    jpeg = await read_upload(request, relay.settings.max_frame_bytes)
    try:
        camera, frame = relay.accept(name, jpeg)
    except FrameRejected as rejected:
        raise HTTPError(rejected.status, rejected.reason) from None
    return web.json_response({
        "seq": frame.seq, "bytes": len(frame.jpeg), "width": frame.width,
        "height": frame.height, "viewers": camera.viewers.count(),
    })


def viewed_camera(request: web.Request) -> Camera:
    """The camera a viewing route names: 404 for one that never uploaded."""
    relay = request.app[RELAY]
    camera = relay.camera(camera_name(request))
    if camera is None:
        raise HTTPError(404, f"no camera named {request.match_info['camera']!r} "
                              "has uploaded a frame")
    return camera


def no_frame_yet(camera: Camera) -> web.HTTPException:
    return HTTPError(503, f"camera {camera.name!r} has not sent a frame yet",
                      {"Retry-After": RETRY_AFTER})


def shutting_down() -> web.HTTPException:
    return HTTPError(503, "server is shutting down; retry shortly",
                      {"Retry-After": RETRY_AFTER, "Connection": "close"})


def requested_width(request: web.Request, frame: Frame | None) -> int | None:
    """The variant width asked for, by `?width=W` or the tutorial's `/liveWxH.jpeg` box."""
    sizes = request.app[SETTINGS].sizes
    box = request.match_info.get("box_width"), request.match_info.get("box_height")
    if box[0] is not None and frame is not None:
        box_w, box_h = int(box[0]), int(box[1])
        fits = [w for w in sizes if w <= box_w and w * frame.height / frame.width <= box_h]
        if not fits:
            raise HTTPError(400, f"box {box_w}x{box_h} is too small: the smallest width "
                                  f"is {sizes[0]}")
        return fits[-1]
    raw = request.query.get("width")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) not in sizes:
        raise HTTPError(400, "width must be one of " + ",".join(map(str, sizes)))
    return int(raw)


def check_width(request: web.Request, camera: Camera) -> None:
    """Reject a bad `?width=` before waiting, while the answer can be a plain 400."""
    requested_width(request, camera.frame)


async def sized(request: web.Request, camera: Camera, frame: Frame) -> Frame:
    if not request.query_string and "box_width" not in request.match_info:
        return frame  # the common case, kept cheap: no query to parse
    width = requested_width(request, frame)
    if width is None:
        return frame
    try:
        return await camera.variant(frame, width)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise HTTPError(500, f"cannot resize this frame: {error}") from None


def frame_response(frame: Frame, headers: Mapping[str, str]) -> web.Response:
    return web.Response(body=frame.jpeg, headers={**headers, "X-Frame-Age": str(frame.age_ms())})


async def live_jpeg(request: web.Request) -> web.Response:
    """The newest frame, at once."""
    camera = viewed_camera(request)
    frame = camera.frame
    if frame is None:
        raise no_frame_yet(camera)
    frame = await sized(request, camera, frame)
    camera.viewers.saw(connection_id(request))
    camera.served += 1
    if request.headers.get("If-None-Match") == frame.etag:
        return web.Response(status=304, headers={"ETag": frame.etag,
                                                 "Cache-Control": LIVE_CACHE_CONTROL})
    return frame_response(frame, frame.live_headers)


def query_number(request: web.Request, key: str, kind: type, minimum: float) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum:
        noun = "a whole number" if kind is int else "a number of seconds"
        raise HTTPError(400, f"{key} must be {noun} >= {minimum}, got {raw[:40]!r}")
    return value


async def next_jpeg(request: web.Request) -> web.Response:
    """Long-poll: a frame newer than `after`, as soon as there is one."""
    settings = request.app[SETTINGS]
    camera = viewed_camera(request)
    after = query_number(request, "after", int, 0)
    timeout = query_number(request, "timeout", float, 0)
    timeout = min(settings.long_poll_default if timeout is None else timeout,
                  settings.long_poll_max)
    check_width(request, camera)
    # Without `after` the answer depends on when it was asked: no shared cache may keep it.
    cacheable = after is not None
    if after is None:
        after = camera.frame.seq if camera.frame else 0
    try:
        with camera.viewers.holding(connection_id(request)):
            frame = await camera.wait_for_newer(int(after), timeout)
    except CameraClosed:
        raise shutting_down() from None
    if frame is None:
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    frame = await sized(request, camera, frame)
    camera.served += 1
    return frame_response(frame, frame.next_headers if cacheable else frame.live_headers)


async def index(request: web.Request) -> web.StreamResponse:
    """`/`: the viewer page, or a grid of cameras; mjpg-streamer's `?action=` aliases."""
    if request.query.get("action") == "snapshot":
        return await live_jpeg(request)
    if request.query.get("action") == "stream":
        return await stream_mjpeg(request)
    relay = request.app[RELAY]
    cameras = relay.cameras_with_frames()
    if len(cameras) > 1:
        return page("grid.html", request, {"cameras": [camera.name for camera in cameras]})
    return viewer_page(request, cameras[0].name if cameras else DEFAULT_CAMERA)


async def camera_page(request: web.Request) -> web.StreamResponse:
    """A camera's page; before its first upload a 404 that still shows how to start one."""
    name = camera_name(request)
    response = viewer_page(request, name)
    if request.app[RELAY].camera(name) is None:
        response.set_status(404)
    return response


def viewer_page(request: web.Request, camera: str) -> web.Response:
    base = "" if camera == DEFAULT_CAMERA else f"/cams/{camera}"
    return page("viewer.html", request, {"camera": camera, "base": base})


async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(HERE / "static" / "favicon.ico")


def page(template: str, request: web.Request, context: dict) -> web.Response:
    context = {"sizes": list(request.app[SETTINGS].sizes), **context}
    response = aiohttp_jinja2.render_template(template, request, context)
    response.headers.update(PAGE_HEADERS)
    response.headers["Cache-Control"] = "no-cache"
    return response


async def tutorial_test_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/")


async def add_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/cams/{camera_name(request)}/")


def camera_status(relay: Relay) -> dict[str, dict[str, float]]:
    now = time.time()
    cameras = {}
    for camera in relay.cameras_with_frames():
        frame = camera.frame
        cameras[camera.name] = {
            "seq": frame.seq, "timestamp": frame.timestamp,
            "age": round(now - frame.timestamp, 3), "bytes": len(frame.jpeg),
            "width": frame.width, "height": frame.height, "fps": camera.upload_fps(),
            "viewers": camera.viewers.count(), "served": camera.served,
            "variants_made": camera.variants_made,
        }
    return cameras


async def status(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    body = {"uptime": round(time.time() - relay.started, 3), "epoch": relay.epoch,
            "cameras": camera_status(relay)}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


METRICS = (
    # name, type, help, how to read it from a camera's /status entry
    ("livecam_frame_seq", "gauge", "Sequence number of the newest frame.", "seq"),
    ("livecam_frame_age_seconds", "gauge", "Seconds since the newest frame arrived.", "age"),
    ("livecam_frame_bytes", "gauge", "Size of the newest frame.", "bytes"),
    ("livecam_upload_fps", "gauge", "Frames uploaded per second, recently.", "fps"),
    ("livecam_viewers", "gauge", "Connections watching now.", "viewers"),
    ("livecam_frames_served_total", "counter", "Frames sent to viewers.", "served"),
    ("livecam_variants_made_total", "counter", "Resized variants computed.", "variants_made"),
)


async def metrics(request: web.Request) -> web.Response:
    """The /status figures in Prometheus' text format, for scraping."""
    cameras = camera_status(request.app[RELAY])
    lines = ["# HELP livecam_uptime_seconds Seconds since the server started.",
             "# TYPE livecam_uptime_seconds gauge",
             f"livecam_uptime_seconds {time.time() - request.app[RELAY].started:.3f}"]
    for name, kind, help_text, key in METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{camera="{camera}"}} {values[key]}'
                  for camera, values in cameras.items()]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain",
                        headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------------------
# 4b. Streams: MJPEG and WebSocket
# ---------------------------------------------------------------------------

BOUNDARY = "livecamframe"
STREAM_REPEAT_AFTER = 1.0  # seconds of camera silence before the last frame is sent again
STREAM_SEND_BUFFER = 64 * 1024  # kernel send buffer of a stream viewer's socket
WS_CLOSE_TIMEOUT = 1.0  # how long a closing WebSocket waits for the peer's close frame
WS_HEARTBEAT = 30.0  # ping so a vanished peer is noticed
STREAM_STALL_LIMIT = 30.0  # a viewer that takes no frame for this long is disconnected

MJPEG_HEADERS = {
    "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each part on at once
    "X-Content-Type-Options": "nosniff",
}


class Streams:
    """The open streams of one server, so that shutdown ends each of them promptly.

    A stream waiting for a frame ends by itself when its camera closes. This registry does
    the rest: `?fps=` pauses end early, WebSockets get a going-away close, and a viewer whose
    socket is stalled (its handler waits for a drain that will not come) is cut off.
    """

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.transports: set[asyncio.BaseTransport] = set()
        self.websockets: set[web.WebSocketResponse] = set()
        self._parts: dict[tuple[str, int, int], tuple[Frame, bytes]] = {}

    @contextlib.contextmanager
    def opened(self, request: web.Request,
               websocket: web.WebSocketResponse | None = None) -> Iterator[None]:
        transport = request.transport
        if transport is not None:
            self.transports.add(transport)
        if websocket is not None:
            self.websockets.add(websocket)
        try:
            yield
        finally:
            self.transports.discard(transport)
            self.websockets.discard(websocket)

    async def pause(self, seconds: float) -> None:
        """Sleep between frames of an `?fps=` stream, but not past shutdown."""
        if seconds > 0 and not self.closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.closing.wait()

    def mjpeg_part(self, camera: Camera, frame: Frame) -> bytes:
        """One multipart part, built once per frame and shared by every viewer.

        The closing boundary follows the JPEG at once (as ustreamer does), so a browser
        shows the frame now rather than when the next part begins. Only the parts of a
        camera's newest seq (the frame and its resized variants) are kept.
        """
        key = (camera.name, frame.seq, frame.width)
        cached = self._parts.get(key)
        if cached is not None and cached[0] is frame:
            return cached[1]
        for stale in [k for k in self._parts if k[0] == camera.name and k[1] != frame.seq]:
            del self._parts[stale]
        head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n"
                f"X-Frame-Seq: {frame.seq}\r\nX-Timestamp: {frame.timestamp:.6f}\r\n\r\n")
        part = b"".join((head.encode(), frame.jpeg, f"\r\n--{BOUNDARY}\r\n".encode()))
        self._parts[key] = (frame, part)
        return part

    async def close(self) -> None:
        """on_shutdown: end pauses, cut stalled sockets, close WebSockets as going away."""
        self.closing.set()
        for transport in list(self.transports):
            if isinstance(transport, asyncio.WriteTransport) and (
                    transport.get_write_buffer_size()):
                transport.abort()
        await asyncio.gather(*(
            websocket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down",
                            drain=False)
            for websocket in list(self.websockets)), return_exceptions=True)


STREAMS = web.AppKey("streams", Streams)


async def close_streams(app: web.Application) -> None:
    """on_shutdown, after the cameras closed: no stream may hold shutdown up."""
    await app[STREAMS].close()


def bound_send_buffers(request: web.Request) -> None:
    """Keep at most about one frame in flight to a stream viewer, however slow it reads.

    aiohttp waits for a slow socket only after 64 KiB are queued, and the kernel lets a send
    buffer grow to megabytes. A small SO_SNDBUF bounds the kernel's share; a write buffer
    limit of zero makes the transport report "paused" while anything is queued, so
    `drain()` returns only once the previous frame has left the process.
    """
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
    transport.set_write_buffer_limits(high=0)


async def pump_frames(request: web.Request, camera: Camera,
                      send: Callable[[Frame], Awaitable[None]], fps: float | None) -> None:
    """Feed one stream viewer until the server shuts down.

    Newest wins: `send` returns only when the viewer took the frame, and then the viewer
    gets the newest frame, so a slow viewer skips frames instead of queueing them. At most
    `fps` frames a second; after a second of camera silence the last frame is sent
    again, so clients and proxies do not time out.
    """
    min_gap = 1 / fps if fps else 0.0
    streams = request.app[STREAMS]
    loop = asyncio.get_running_loop()
    seq = 0
    while not camera.closed:
        try:
            frame = await camera.wait_for_newer(seq, STREAM_REPEAT_AFTER) or camera.frame
        except CameraClosed:
            return
        if frame is None:
            continue
        started = loop.time()
        frame = await sized(request, camera, frame)
        seq = frame.seq
        try:
            async with asyncio.timeout(STREAM_STALL_LIMIT):
                await send(frame)
        except TimeoutError:  # alive but not reading: let it go rather than hold it forever
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the viewer stopped reading") from None
        camera.served += 1
        await streams.pause(min_gap - (loop.time() - started))


async def stream_mjpeg(request: web.Request) -> web.StreamResponse:
    """`/stream.mjpg`: one JPEG part per frame, for <img>, VLC, ffmpeg and Home Assistant."""
    camera = viewed_camera(request)
    check_width(request, camera)
    fps = query_number(request, "fps", int, 1)
    response = web.StreamResponse(headers=MJPEG_HEADERS)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    bound_send_buffers(request)
    streams = request.app[STREAMS]

    async def send(frame: Frame) -> None:
        await response.write(streams.mjpeg_part(camera, frame))
        await request.writer.drain()

    with (
        contextlib.suppress(ConnectionError, HTTPError),  # gone, or a bad ?width=
        streams.opened(request),
        camera.viewers.holding(connection_id(request)),
    ):
        await response.write(f"--{BOUNDARY}\r\n".encode())
        await pump_frames(request, camera, send, fps)
    return response


def frame_summary(frame: Frame) -> str:
    """The JSON text message that precedes each JPEG on the viewer WebSocket."""
    return json.dumps({"seq": frame.seq, "timestamp": frame.timestamp,
                       "age": frame.age_ms() / 1000, "width": frame.width,
                       "height": frame.height, "bytes": len(frame.jpeg)})


async def ws_viewer(request: web.Request) -> web.WebSocketResponse:
    """`/ws`: per frame a JSON text message (seq, timestamp, age), then the JPEG as binary.

    Sending and reading run side by side: reading answers pings and notices the close.
    """
    camera = viewed_camera(request)
    check_width(request, camera)
    fps = query_number(request, "fps", int, 1)
    ws = web.WebSocketResponse(compress=False, writer_limit=0, timeout=WS_CLOSE_TIMEOUT,
                               heartbeat=WS_HEARTBEAT, max_msg_size=64 * 1024)
    await ws.prepare(request)
    bound_send_buffers(request)

    async def send(frame: Frame) -> None:
        await ws.send_str(frame_summary(frame))
        await ws.send_bytes(frame.jpeg)

    code, reason = WSCloseCode.GOING_AWAY, b"server shutting down"
    try:
        with (
            request.app[STREAMS].opened(request, ws),
            camera.viewers.holding(connection_id(request)),
        ):
            await first_to_finish(pump_frames(request, camera, send, fps),
                                  read_until_closed(ws))
    except ConnectionError:
        pass
    except HTTPError as error:  # a bad ?width= found with the first frame
        code, reason = WSCloseCode.POLICY_VIOLATION, error.text.strip().encode()[:120]
    await ws.close(code=code, message=reason)
    return ws


async def read_until_closed(ws: web.WebSocketResponse) -> None:
    """A viewer has nothing to say; reading answers its pings and notices its close."""
    async for _message in ws:
        pass
    raise ConnectionResetError("the viewer closed the WebSocket")  # stops counting at once


async def first_to_finish(*coroutines: Awaitable[None]) -> None:
    """Run side by side until one returns or fails; cancel the others, re-raise its error."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


async def ws_upload(request: web.Request) -> web.WebSocketResponse:
    """`/upload/ws`: a camera's lasting connection; each binary message is one frame.

    The password is checked before the upgrade, so a wrong one is a plain 401.
    """
    relay = request.app[RELAY]
    name = camera_name(request)
    check_password(request, name)
    ws = web.WebSocketResponse(compress=False, timeout=WS_CLOSE_TIMEOUT,
                               heartbeat=WS_HEARTBEAT, max_msg_size=relay.settings.max_frame_bytes)
    await ws.prepare(request)
    with request.app[STREAMS].opened(request, ws):
        async for message in ws:
            if message.type is WSMsgType.ERROR:
                break
            with contextlib.suppress(ConnectionError):
                await ws.send_json(accept_message(relay, name, message))
    return ws


def accept_message(relay: Relay, name: str, message: WSMessage) -> dict:
    """One WebSocket message as an upload: the checks of HTTP uploads, the answer in JSON."""
    if message.type is not WSMsgType.BINARY:
        return {"error": "text message: send each JPEG frame as one binary message",
                "status": 415}
    try:
        camera, frame = relay.accept(name, message.data)
    except FrameRejected as rejected:
        return {"error": rejected.reason, "status": rejected.status}
    return {"seq": frame.seq, "viewers": camera.viewers.count()}


# ---------------------------------------------------------------------------
# 5. The application
# ---------------------------------------------------------------------------

PASSWORD_IN_URL = re.compile(r"(password=)[^&\s\"]*", re.IGNORECASE)
QUERY = re.compile(r"\?[^\s\"]*")


def redact(text: str) -> str:
    """`text` with every password in a URL replaced, however it was percent-encoded."""
    text = PASSWORD_IN_URL.sub(r"\1REDACTED", text)
    if "password" in urllib.parse.unquote(text).lower().replace("password=redacted", ""):
        text = QUERY.sub("?REDACTED", text)  # an encoded name: drop whole query strings
    return text


class RedactPasswords(logging.Filter):
    """aiohttp's access log prints the query string; the tutorial puts the password there.

    The message is not all: aiohttp also hands the request line and headers to the log
    record, where a structured (JSON, journald) handler would print them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if isinstance(getattr(record, "first_request_line", None), str):
            record.first_request_line = redact(record.first_request_line)
        headers = getattr(record, "request_header", None)
        if isinstance(headers, dict):
            record.request_header = {key: redact(value) if isinstance(value, str) else value
                                     for key, value in headers.items()}
        return True


class QuietFrameAccessLogger(AccessLogger):
    """The access log, without a line for every frame that went well.

    A camera uploads about ten frames a second and each viewer fetches as many: logged at
    INFO they would bury everything else. They are logged when DEBUG is on; errors always.
    """

    FRAME_HANDLERS = frozenset({upload, live_jpeg, next_jpeg})

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if (response.status < 400 and not self.logger.isEnabledFor(logging.DEBUG)
                and getattr(request, "match_info", None) is not None
                and request.match_info.route.handler in self.FRAME_HANDLERS):
            return
        super().log(request, response, time)


async def relay_context(app: web.Application) -> AsyncIterator[None]:
    """Open the database, restore the newest frames, and flush them on the way out."""
    settings = app[SETTINGS]
    store = FrameStore(settings.db_path, settings.persist_interval)
    relay = Relay(settings, store)
    epoch, rows = await asyncio.wrap_future(store.start())
    relay.restore(epoch, rows)
    app[RELAY] = relay
    log.info("database %s: epoch %s, restored %d camera(s)", settings.db_path, epoch, len(rows))
    yield  # on_shutdown (release_viewers) has released every waiter by now
    await asyncio.to_thread(store.close)


async def release_viewers(app: web.Application) -> None:
    """Answer every held request at once, so shutdown does not wait for long-polls."""
    if RELAY in app:
        app[RELAY].close()


def create_app(settings: Settings) -> web.Application:
    if not any(isinstance(f, RedactPasswords) for f in access_log.filters):
        access_log.addFilter(RedactPasswords())
    app = web.Application(
        client_max_size=settings.max_frame_bytes + MiB,
        handler_args={
            # A viewer that hangs up stops waiting (and counting) at once.
            "handler_cancellation": True,
            "access_log": access_log if settings.access_log else None,
            "access_log_class": QuietFrameAccessLogger,
        },
    )
    app[SETTINGS] = settings
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                         autoescape=True)
    app.cleanup_ctx.append(relay_context)
    app[STREAMS] = Streams()
    app.on_shutdown.append(release_viewers)
    app.on_shutdown.append(close_streams)
    if settings.allow_origin:
        app.on_response_prepare.append(cors_headers(settings.allow_origin))
    add_routes(app)
    return app


def cors_headers(origin: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Let a dashboard on `origin` fetch frames, timeouts and errors alike, and read the
    frame headers."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = (
            "ETag, X-Frame-Seq, X-Frame-Timestamp, X-Frame-Age")
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST"
            response.headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, If-None-Match")
            response.headers["Access-Control-Max-Age"] = "600"

    return add


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight: the headers are added by `cors_headers`."""
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", index)
    router.add_post("/", upload, expect_handler=expect_upload)  # the tutorial's form
    router.add_get("/test", tutorial_test_page)
    router.add_get("/status", status)
    router.add_get("/metrics", metrics)
    router.add_get("/favicon.ico", favicon)
    for prefix in ("", "/cams/{camera}"):
        router.add_post(prefix + "/upload", upload, expect_handler=expect_upload)
        router.add_get(prefix + "/live.jpeg", live_jpeg)
        router.add_get(prefix + r"/live{box_width:\d{1,5}}x{box_height:\d{1,5}}.jpeg",
                       live_jpeg)
        router.add_get(prefix + "/next.jpeg", next_jpeg)
        router.add_get(prefix + "/stream.mjpg", stream_mjpeg)
        router.add_get(prefix + "/ws", ws_viewer)
        router.add_get(prefix + "/upload/ws", ws_upload)
    router.add_get("/cams/{camera}/", camera_page)
    router.add_get("/cams/{camera}", add_slash)
    router.add_static("/static/", HERE / "static")
    if app[SETTINGS].allow_origin:
        router.add_route("OPTIONS", "/{path:.*}", preflight)


# ---------------------------------------------------------------------------
# 6. main
# ---------------------------------------------------------------------------

LISTEN_BACKLOG = 4096


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then release viewers, flush, and exit within seconds."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG)
    await site.start()
    url = server_url(settings.host, runner.addresses[0][1])
    log.info("listening on %s", url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    demo = asyncio.create_task(run_demo(url, settings.password)) if settings.demo else None
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if demo is not None:
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo
        await runner.cleanup()


def server_url(host: str, port: int) -> str:
    """The address to open: `localhost` for a server listening on every interface."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


async def run_demo(url: str, password: str) -> None:
    """The demo camera: uploader.py's demo source, through the real upload endpoint."""
    import uploader

    options = uploader.Options(url=url.rstrip("/"), password=password, source="demo",
                               quiet=True)
    try:
        status = await uploader.run(options)
    except Exception:
        log.exception("demo camera failed")
        return
    if status:
        log.error("demo camera stopped (exit status %d); see the messages above", status)


def print_camera_hint(settings: Settings, secret_file: Path) -> None:
    """Where the generated password is, and how to start a camera with it (never the secret)."""
    secret_file = secret_file.resolve()
    log.info("upload password is in %s; start a camera with:\n  LIVECAM_PASSWORD=\"$(cat %s)\" "
             "python uploader.py --url %s", secret_file, secret_file,
             server_url(settings.host, settings.port).rstrip("/"))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    password, generated_file = resolve_password(args.password_file, args.db)
    settings = settings_from_args(args, password)
    if generated_file is not None:
        print_camera_hint(settings, generated_file)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
