"""Stand-in for picamera2.outputs: Output and FileOutput with the real write semantics.

FileOutput accepts a path or an io.BufferedIOBase; each encoded frame is one `write()`
followed by `flush()`, on the encoder's thread.
"""

import io
from pathlib import Path


class Output:
    def __init__(self, pts=None):
        self.recording = False
        self.ptsoutput = pts

    def start(self):
        self.recording = True

    def stop(self):
        self.recording = False

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        pass


class FileOutput(Output):
    def __init__(self, file=None, pts=None, split=None):
        super().__init__(pts=pts)
        self.dead = False
        self._needs_close = False
        if file is None:
            self._fileoutput = None
        elif isinstance(file, (str, Path)):
            self._fileoutput = open(file, "wb")  # noqa: SIM115 - closed in close(), as upstream
            self._needs_close = True
        elif isinstance(file, io.BufferedIOBase):
            self._fileoutput = file
        else:
            raise RuntimeError("Must pass io.BufferedIOBase")

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        if audio:
            raise RuntimeError("Fileoutput does not support audio")
        if self._fileoutput is not None and self.recording:
            self._fileoutput.write(frame)
            self._fileoutput.flush()

    def stop(self):
        super().stop()
        self.close()

    def close(self):
        if self._needs_close:
            self._fileoutput.close()
