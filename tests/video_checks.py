"""Reading back what the videos wrote, and running code with a rendering library made unloadable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

# Prepended to a child Python: every attempt to load libOSMesa fails as it does where Debian's
# libosmesa6 is not installed (PyOpenGL loads it through ctypes.CDLL).
WITHOUT_OSMESA = """
import ctypes
_load = ctypes.CDLL.__init__
def _without_osmesa(self, name, *args, **kwargs):
    if name and "osmesa" in str(name).lower():
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")
    _load(self, name, *args, **kwargs)
ctypes.CDLL.__init__ = _without_osmesa
"""


def read_frames(path: Path) -> np.ndarray:
    """Every frame of a video file, ``(T, H, W, 3)`` uint8, decoded by imageio's ffmpeg plugin."""
    import imageio.v2

    with imageio.v2.get_reader(path, format="FFMPEG") as reader:
        return np.stack([np.asarray(frame) for frame in reader])


def mp4_tags(path: Path) -> dict[str, str]:
    """The container's metadata tags (title, comment, ...), as ffmpeg prints them."""
    import imageio_ffmpeg

    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True)
    return dict(re.findall(r"^\s{4}(\w+)\s*: (.*)$", done.stderr, flags=re.MULTILINE))


def distinct_frames(frames: np.ndarray) -> int:
    return len({frame.tobytes() for frame in frames})


def has_border(frame: np.ndarray, colour: np.ndarray, tolerance: int = 40) -> bool:
    """Whether the frame's outermost ring of pixels is ``colour`` (up to lossy compression)."""
    ring = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    return bool(np.abs(ring.astype(int) - colour.astype(int)).max(axis=1).mean() < tolerance)


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=merged
    )
