"""Smoke test of scripts/bench_combiners.py: it runs and writes well-formed JSON records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_combiners.py"


def test_bench_combiners_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--tasks", "3"]
    command += ["--methods", "mean", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    records = json.loads(out.read_text())
    assert isinstance(records, list)
    assert records
    for record in records:
        assert {"device", "K", "method", "what", "ms_median"} <= set(record)
        assert record["device"] == "cpu"
        assert record["K"] == 3
        assert record["what"] in {"solve", "backward"}
        assert record["ms_median"] > 0
    methods = {(record["what"], record["method"]) for record in records}
    assert ("backward", "mean") in methods  # the baseline
    assert ("backward", "mean/vmap") in methods
    assert ("solve", "mean") in methods
    baseline = next(r for r in records if r["what"] == "backward" and r["method"] == "mean")
    assert baseline["ratio_to_mean"] == 1.0
    assert "threads" in completed.stdout
