"""Stand-in for libcamera's Python bindings, as far as picamera2 configurations use them.

Test-only: put tests/fake_picamera2 on PYTHONPATH. The real module comes with
python3-libcamera on Raspberry Pi OS.
"""


class Transform:
    """An image transform applied by the camera pipeline itself (flips only, as on a Pi)."""

    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0) -> None:
        self.hflip = int(hflip)
        self.vflip = int(vflip)
        self.transpose = int(transpose)

    def __repr__(self) -> str:
        return f"<libcamera.Transform hflip={self.hflip} vflip={self.vflip}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and (
            (self.hflip, self.vflip, self.transpose)
            == (other.hflip, other.vflip, other.transpose))

    __hash__ = None  # mutable, like the real one
