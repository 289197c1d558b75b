"""Tile evaluation clips side by side into one looping GIF (the README's picture of a trained policy).

    python scripts/clips_to_gif.py runs/<run>/videos/*.mp4 --out docs/images/policy.gif

Each clip is read with imageio's ffmpeg plugin, sampled at ``--fps`` frames per second, shrunk to
``--size`` pixels a side, and shown next to the others; a clip that ends first holds its last frame
(with its success border) until the longest one ends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v2
import numpy as np

from mtrl_fair.envs.video import gif_bytes


def read_clip(path: Path, fps: float, size: int) -> np.ndarray:
    """The clip's frames at ``fps`` frames per second, ``size`` pixels a side (nearest pixel)."""
    with imageio.v2.get_reader(path, format="FFMPEG") as reader:
        source_fps = float(reader.get_meta_data()["fps"])
        frames = np.stack([np.asarray(frame) for frame in reader])
    keep = np.arange(0, len(frames), max(1.0, source_fps / fps)).astype(int)
    rows = np.linspace(0, frames.shape[1] - 1, size).round().astype(int)
    cols = np.linspace(0, frames.shape[2] - 1, size).round().astype(int)
    return frames[keep][:, rows][:, :, cols]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clips", nargs="+", type=Path, help="MP4 files, shown left to right")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=160, help="pixels a side of each tile")
    args = parser.parse_args(argv)
    clips = [read_clip(path, args.fps, args.size) for path in args.clips]
    length = max(len(clip) for clip in clips)
    padded = [np.concatenate([clip, np.repeat(clip[-1:], length - len(clip), axis=0)]) for clip in clips]
    gap = np.full((length, args.size, 4, 3), 255, dtype=np.uint8)
    tiles = [part for clip in padded for part in (clip, gap)][:-1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(gif_bytes(np.concatenate(tiles, axis=2), args.fps))
    print(f"wrote {args.out}: {length} frames, {args.out.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
