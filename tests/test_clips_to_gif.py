"""scripts/clips_to_gif.py: clips of different lengths tiled into one looping GIF."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v2
import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "clips_to_gif.py"


def write_clip(path: Path, frames: int, shade: int) -> None:
    with imageio.v2.get_writer(
        path, format="FFMPEG", fps=80, macro_block_size=16, ffmpeg_log_level="error"
    ) as writer:
        for index in range(frames):
            frame = np.full((32, 32, 3), shade, dtype=np.uint8)
            frame[:, : index % 32] = 255 - shade  # a bar that grows: every frame differs
            writer.append_data(frame)


def test_clips_are_tiled_and_the_shorter_one_holds_its_last_frame(tmp_path: Path) -> None:
    write_clip(tmp_path / "a.mp4", 80, 30)  # 1 s at 80 fps
    write_clip(tmp_path / "b.mp4", 40, 200)  # half a second
    out = tmp_path / "out.gif"
    command = [sys.executable, str(SCRIPT), str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    done = subprocess.run(
        [*command, "--out", str(out), "--fps", "20", "--size", "24"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as gif:
        assert gif.format == "GIF"
        assert gif.size == (24 + 4 + 24, 24)
        assert gif.n_frames == 20  # the longer clip, at 20 of its 80 frames per second
        assert gif.info["duration"] == 50
    assert "20 frames" in done.stdout
