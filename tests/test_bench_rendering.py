"""Smoke test of scripts/bench_rendering.py: it runs and writes one well-formed row per size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_rendering.py"


def test_bench_rendering_quick(tmp_path: Path) -> None:
    out = tmp_path / "rendering.json"
    command = [sys.executable, str(SCRIPT), "--sizes", "32", "--frames", "3", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())
    assert row["backend"] in ("egl", "osmesa", "glfw")
    assert (row["size"], row["frames"]) == (32, 3)
    for key in ("render_full_ms", "render_ms", "encode_ms", "record_ms"):
        assert row[key] > 0, key
    assert "ms per frame" in done.stdout
