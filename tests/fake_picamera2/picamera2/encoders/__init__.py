"""Stand-in for picamera2.encoders: the software JpegEncoder.

With FAKE_PICAMERA2_NO_ENCODERS=1 the import fails the way it does on an install whose
encoder dependencies (PyAV, videodev2) are missing, so callers' capture_file fallback runs.
"""

import os

if os.environ.get("FAKE_PICAMERA2_NO_ENCODERS"):
    raise ModuleNotFoundError("No module named 'av'", name="av")

from picamera2 import MappedArray, encode_jpeg


class Quality:
    VERY_LOW, LOW, MEDIUM, HIGH, VERY_HIGH = range(5)


class Encoder:
    def __init__(self):
        self.output = None
        self.name = None
        self._running = False

    def start(self, quality=None):
        if self._running:
            raise RuntimeError("Encoder already running")
        self._setup(quality)
        self._running = True
        outputs = self.output if isinstance(self.output, list) else [self.output]
        for output in outputs:
            output.start()

    def stop(self):
        if not self._running:
            raise RuntimeError("Encoder already stopped")
        self._running = False
        outputs = self.output if isinstance(self.output, list) else [self.output]
        for output in outputs:
            output.stop()

    def _setup(self, quality):
        pass

    def outputframe(self, frame, keyframe=True, timestamp=None):
        outputs = self.output if isinstance(self.output, list) else [self.output]
        for output in outputs:
            output.outputframe(frame, keyframe, timestamp)

    def encode(self, stream, request):
        if self._running:
            self.outputframe(self.encode_func(request, stream), timestamp=request.timestamp_us)


class JpegEncoder(Encoder):
    """Encodes XBGR8888 frames to JPEG (the real one uses simplejpeg; here Pillow)."""

    def __init__(self, num_threads=4, q=None, colour_space=None, colour_subsampling="420"):
        super().__init__()
        self.q = q
        self.colour_space = colour_space
        self.colour_subsampling = colour_subsampling

    def _setup(self, quality):
        if quality is not None or self.q is None:
            table = {Quality.VERY_LOW: 25, Quality.LOW: 35, Quality.MEDIUM: 50,
                     Quality.HIGH: 65, Quality.VERY_HIGH: 80}
            self.q = table[Quality.MEDIUM if quality is None else quality]

    def encode_func(self, request, name):
        config = request.config[name]
        with MappedArray(request, name, reshape=False) as m:
            return encode_jpeg(m.array, config, self.q)

