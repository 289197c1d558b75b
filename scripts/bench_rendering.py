"""Time the evaluation videos: one frame drawn, one frame encoded, and a whole clip recorded.

    python scripts/bench_rendering.py --sizes 64 240 --frames 100

For each size, on one reach-v3 sub-env seen from ``corner3``, in milliseconds per frame (median of
``--frames``):

- ``render_full``: MuJoCo's own quality (shadows, reflections, 4× multisampling);
- ``render``: what the videos use (on OSMesa those three are off; on EGL, the same as full);
- ``encode``: imageio's ffmpeg writer (H.264) on frames already drawn, until the file is closed;
- ``record``: :func:`~mtrl_fair.envs.video.record_videos` end to end (policy, step, draw, encode,
  tagging the file), per frame written.

The backend is chosen as for the videos (``MUJOCO_GL`` wins). ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import imageio.v2
import numpy as np

from mtrl_fair.envs import make_vector_env
from mtrl_fair.envs.rendering import FrameRenderer, prepare_rendering
from mtrl_fair.envs.video import VIDEO_SIZE_STEP, record_videos


class RandomPolicy:
    """Moves the arm, so frames differ; SB3's predict."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return self.rng.uniform(-1, 1, size=(obs.shape[0], 4)).astype(np.float32), None


def per_frame_ms(draw: FrameRenderer, env: Any, frames: int) -> tuple[float, list[np.ndarray]]:
    times, drawn = [], []
    sub_env = env.envs[0]
    for _ in range(frames):
        sub_env.step(sub_env.action_space.sample())
        start = time.perf_counter()
        drawn.append(draw.frame())
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), drawn


def bench(size: int, frames: int, backend: str) -> dict[str, float | int | str]:
    row: dict[str, float | int | str] = {"backend": backend, "size": size, "frames": frames}
    for key, software in (("render_full_ms", False), ("render_ms", backend == "osmesa")):
        env = make_vector_env("MT10", ["reach-v3"], seed=0, render_size=size)
        env.reset()
        row[key], drawn = per_frame_ms(FrameRenderer(env.envs[0], software=software), env, frames)
        env.close()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with imageio.v2.get_writer(
            Path(folder) / "clip.mp4",
            format="FFMPEG",
            fps=80,
            codec="libx264",
            quality=7,
            macro_block_size=VIDEO_SIZE_STEP,
            ffmpeg_log_level="error",
        ) as writer:
            for frame in drawn:
                writer.append_data(frame)
        row["encode_ms"] = 1000 * (time.perf_counter() - start) / frames
        env = make_vector_env("MT10", ["reach-v3"], seed=0, render_size=size, max_episode_steps=frames)
        start = time.perf_counter()
        videos = record_videos(RandomPolicy(), env, folder)
        elapsed = time.perf_counter() - start
        env.close()
    written = sum(episode.steps + 1 for video in videos.values() for episode in video.episodes)
    row["record_ms"] = 1000 * elapsed / written
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 240])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    backend = prepare_rendering()
    rows = [bench(size, args.frames, backend) for size in args.sizes]
    print(
        f"{'backend':8s} {'size':>5s} {'full':>9s} {'render':>9s} {'encode':>9s} {'record':>9s}  (ms per frame)"
    )
    for row in rows:
        print(
            f"{row['backend']:8s} {row['size']:5d} {row['render_full_ms']:9.1f} {row['render_ms']:9.1f} "
            f"{row['encode_ms']:9.1f} {row['record_ms']:9.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
