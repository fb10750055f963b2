"""Helpers shared by the tests: real JPEGs and a real server process."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "test-password-1234"


def make_jpeg(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 40),
              comment: bytes = b"", noise: bool = False) -> bytes:
    """A real JPEG; `comment` goes into a COM segment so each frame can be told apart, and
    `noise` makes it as large as its pixel count allows."""
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), color)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95 if noise else 85, comment=comment)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python livecam.py` in a process of its own, as a user runs it."""

    def __init__(self, db_path: Path, *args: str, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = db_path.with_suffix(f".{self.port}.log")
        command = [sys.executable, str(ROOT / "livecam.py"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--db", str(db_path), *args]
        environment = {**os.environ, "LIVECAM_PASSWORD": PASSWORD} if env is None else env
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment, cwd=ROOT)
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise

    def wait_ready(self, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"livecam exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"livecam did not answer within {seconds} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
