"""Stand-in for picamera2 at the hardware boundary, for tests only.

Put tests/fake_picamera2 on PYTHONPATH (or sys.path) and `import picamera2` finds this
instead of the real library (python3-picamera2 on Raspberry Pi OS). It offers the classes
and calls uploader.py uses, with the real signatures and threading:

- `Picamera2()` opens "the camera"; `create_video_configuration()` / `create_still_configuration()`
  return config dicts (main stream XBGR8888 by default, `transform`, `controls`);
  `configure()` fills in `stride`; `set_controls({"FrameRate": fps})` changes the rate;
  `start()` / `stop()` / `close()`; `start_recording(encoder, output)` / `stop_recording()`;
  `capture_file(file, format="jpeg")` (quality from `options["quality"]`, default 90);
  `pre_callback(request)` runs on the camera thread before any encoding, and may draw
  into the buffer through `MappedArray(request, "main")`.
- Frames come from a camera thread at the configured frame rate. The picture is mid grey with a
  white square near the top-left corner, after the configured flips (so a test can see a
  transform took effect), in a fresh anonymous mmap per frame, like the real DMA buffers.
- `MappedArray.array` is a writable flat byte view (the real one is a numpy array; only
  `reshape=False` is offered here). Leaving the block with a view still exported raises
  BufferError, as unmapping the real buffer does.
- With FAKE_PICAMERA2_LOG=FILE, each hardware call is appended to FILE as one line
  ("open", "configure 320x240 XBGR8888 hflip=1 vflip=1", "controls FrameRate=1",
  "start_recording", "stop_recording", "close"), so a test can check the camera was closed.
"""

import io
import mmap
import os
import threading
import time
from pathlib import Path

from libcamera import Transform
from PIL import Image

__all__ = ["CompletedRequest", "MappedArray", "Picamera2"]

SENSOR_SIZE = (4608, 2592)
BYTES_PER_PIXEL = {"XBGR8888": 4, "XRGB8888": 4, "BGR888": 3, "RGB888": 3}
RAW_MODE = {"XBGR8888": "RGBX", "XRGB8888": "BGRX", "BGR888": "BGR", "RGB888": "RGB"}


def encode_jpeg(buffer, config, quality):
    """JPEG of a stream buffer, honouring its stride (the real library uses simplejpeg)."""
    width, height = config["size"]
    image = Image.frombuffer("RGB", (width, height), bytes(buffer), "raw",
                             RAW_MODE[config["format"]], config["stride"], 1)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _log(line):
    path = os.environ.get("FAKE_PICAMERA2_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class CompletedRequest:
    """One frame from the camera: its buffers and the configuration they were made with."""

    def __init__(self, picam2, pixels):
        self.picam2 = picam2
        self.config = {name: dict(c) if isinstance(c, dict) else c
                       for name, c in picam2.camera_config.items()}
        self.timestamp_us = int(time.monotonic() * 1e6)
        self._pixels = bytearray(pixels)

    def release(self):
        pass


class MappedArray:
    """Maps a request's stream buffer for reading and drawing, for the length of a with block."""

    def __init__(self, request, stream, reshape=True, write=True):
        if reshape:
            raise NotImplementedError("the stand-in picamera2 maps flat buffers only "
                                      "(MappedArray(..., reshape=False))")
        if stream != "main":
            raise KeyError(stream)
        self._request = request
        self._write = write
        self._map = None
        self._array = None

    def __enter__(self):
        self._map = mmap.mmap(-1, len(self._request._pixels))
        self._map.write(self._request._pixels)
        view = memoryview(self._map)
        self._array = view if self._write else view.toreadonly()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._array.release()
        self._array = None
        if self._write:
            self._request._pixels[:] = self._map[:]
        # Raises BufferError while anyone still holds a view, as unmapping does on a Pi.
        self._map.close()

    @property
    def array(self):
        return self._array


def _frame_pixels(config):
    """The test picture in the stream's pixel format, rows padded to the stride."""
    width, height = config["main"]["size"]
    image = Image.new("RGB", (width, height), (128, 128, 128))
    square = Image.new("RGB", (width // 4, height // 4), (255, 255, 255))
    image.paste(square, (width // 16, height // 16))
    transform = config.get("transform") or Transform()
    if transform.hflip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if transform.vflip:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    fmt = config["main"]["format"]
    data = image.tobytes("raw", RAW_MODE[fmt])
    row = width * BYTES_PER_PIXEL[fmt]
    padding = bytes(config["main"]["stride"] - row)
    return b"".join(data[i:i + row] + padding for i in range(0, len(data), row))


class Picamera2:
    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        if os.environ.get("FAKE_PICAMERA2_NO_CAMERA"):
            raise IndexError("list index out of range")  # what the real one says: no camera
        self.camera_num = camera_num
        self.is_open = True
        self.started = False
        self.options = {}
        self.pre_callback = None
        self.camera_config = {}
        self.controls = {}
        self._encoders = set()
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._latest = None
        self._thread = None
        _log("open")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    # configurations -------------------------------------------------------

    @staticmethod
    def _stream(defaults, updates):
        stream = dict(defaults)
        stream.update(updates or {})
        stream["size"] = tuple(stream["size"])
        return stream

    def create_video_configuration(self, main=None, lores=None, raw=None, transform=None,
                                   colour_space=None, buffer_count=6, controls=None,
                                   display="main", encode="main", queue=True, sensor=None,
                                   use_case="video"):
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        return {
            "use_case": use_case, "transform": transform or Transform(),
            "colour_space": colour_space, "buffer_count": buffer_count, "queue": queue,
            "main": self._stream({"format": "XBGR8888", "size": (1280, 720)}, main),
            "lores": lores, "raw": raw, "sensor": sensor, "display": display,
            "encode": encode,
            "controls": {"FrameDurationLimits": (33333, 33333)} | (controls or {}),
        }

    def create_still_configuration(self, main=None, lores=None, raw=None, transform=None,
                                   colour_space=None, buffer_count=1, controls=None,
                                   display=None, encode=None, queue=True, sensor=None,
                                   use_case="still"):
        config = self.create_video_configuration(
            main=self._stream({"format": "BGR888", "size": SENSOR_SIZE}, main), lores=lores,
            raw=raw, transform=transform, colour_space=colour_space,
            buffer_count=buffer_count, controls=controls, display=display, encode=encode,
            queue=queue, sensor=sensor, use_case=use_case)
        config["controls"] = dict(controls or {})
        return config

    def configure(self, camera_config=None):
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            camera_config = self.create_video_configuration()
        config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camera_config.items()}
        main = config["main"]
        if main["format"] not in BYTES_PER_PIXEL:
            raise RuntimeError(f"stand-in does not offer format {main['format']}")
        row = main["size"][0] * BYTES_PER_PIXEL[main["format"]]
        main["stride"] = (row + 63) // 64 * 64
        main["framesize"] = main["stride"] * main["size"][1]
        self.camera_config = config
        self.controls = dict(config.get("controls") or {})
        self._pixels = _frame_pixels(config)
        t = config["transform"]
        _log(f"configure {main['size'][0]}x{main['size'][1]} {main['format']} "
             f"hflip={t.hflip} vflip={t.vflip}")

    def camera_configuration(self):
        return self.camera_config

    def set_controls(self, controls):
        with self._lock:
            self.controls.update(controls)
        _log("controls " + " ".join(f"{k}={v}" for k, v in sorted(controls.items())))

    # running --------------------------------------------------------------

    def _frame_interval(self):
        with self._lock:
            if "FrameRate" in self.controls:
                return 1 / float(self.controls["FrameRate"])
            return self.controls.get("FrameDurationLimits", (33333, 33333))[1] / 1e6

    def _run(self):
        next_frame = time.monotonic()
        while self.started:
            request = CompletedRequest(self, self._pixels)
            if self.pre_callback:
                self.pre_callback(request)
            for encoder in list(self._encoders):
                encoder.encode(encoder.name, request)
            with self._new_frame:
                if self._latest is not None:
                    self._latest.release()
                self._latest = request
                self._new_frame.notify_all()
            next_frame += self._frame_interval()
            time.sleep(max(0.0, next_frame - time.monotonic()))
            next_frame = max(next_frame, time.monotonic() - 1)

    def start(self, config=None, show_preview=False):
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self.started = True
        self._thread = threading.Thread(target=self._run, name="fake-picamera2", daemon=True)
        self._thread.start()
        _log("start")

    def stop(self):
        if not self.started:
            return
        self.started = False
        self._thread.join()
        with self._new_frame:
            if self._latest is not None:
                self._latest.release()
            self._latest = None
            self._new_frame.notify_all()
        _log("stop")

    def close(self):
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        self.camera_config = {}
        _log("close")

    # recording and capturing ---------------------------------------------

    def start_recording(self, encoder, output, pts=None, config=None, quality=None, name=None):
        if not self.camera_config:
            self.configure(config or self.create_video_configuration())
        encoder.output = output
        encoder.name = name or "main"
        encoder.start(quality=quality)
        with self._lock:
            self._encoders.add(encoder)
        _log("start_recording")
        self.start()

    def stop_recording(self):
        self.stop()
        for encoder in list(self._encoders):
            encoder.stop()
        self._encoders.clear()
        _log("stop_recording")

    def capture_file(self, file_output, name="main", format=None, wait=None,
                     signal_function=None, exif_data=None):
        if not self.started:
            raise RuntimeError("stand-in picamera2: capture_file before start() would wait "
                               "forever on a real camera")
        with self._new_frame:
            seen = self._latest
            while self.started and self._latest is seen:
                self._new_frame.wait(1)
            request = self._latest
            config = request.config[name]
            data = bytes(request._pixels)
        jpeg = encode_jpeg(data, config, self.options.get("quality", 90))
        if isinstance(file_output, (str, Path)):
            Path(file_output).write_bytes(jpeg)
        else:
            file_output.write(jpeg)
        _log("capture_file")
        return {"SensorTimestamp": request.timestamp_us}
