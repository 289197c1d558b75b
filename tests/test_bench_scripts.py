"""Smoke tests of the benchmark scripts: they run and write well-formed JSON records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_combiners.py"


def test_bench_combiners_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--tasks", "3"]
    command += ["--methods", "mean", "fairgrad", "--vmap", "--json", str(out)]
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
    assert ("backward", "mean/combined") in methods  # mean through the combined front door
    assert ("backward", "mean/vmap") in methods
    assert ("backward", "fairgrad") in methods  # the layer path, as the agents run it
    assert ("backward", "fairgrad/vmap") in methods
    assert ("solve", "mean") in methods
    baseline = next(r for r in records if r["what"] == "backward" and r["method"] == "mean")
    assert baseline["ratio_to_mean"] == 1.0
    assert "threads" in completed.stdout


THROUGHPUT = SCRIPT.parent / "bench_throughput.py"


def test_bench_throughput_quick(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    command = [sys.executable, str(THROUGHPUT), "--tasks", "reach-v3", "drawer-close-v3"]
    command += ["--hidden", "16", "16", "--iterations", "3", "--update-repeats", "2", "--warmup", "5"]
    command += ["--combiners", "mean", "fairgrad", "--overlap", "--defaults", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["tasks"] == 2
    assert record["device"] == "cpu"
    methods = [row["method"] for row in record["rows"]]
    assert methods == [
        "env_only",
        "mtsac/mean",
        "mtsac/mean+overlap",
        "mtsac/fairgrad",
        "mtsac/fairgrad+overlap",
        "paper_rl/fairgrad",
        "mtsac/mean+defaults",  # on the CPU: sync envs (those of the other rows), no graph, no overlap
        "mtsac/fairgrad+defaults",
        "sb3_sac",
    ]
    rows = {row["method"]: row for row in record["rows"]}
    assert rows["env_only"]["fraction_of_floor"] == 1.0
    assert rows["mtsac/mean"]["update_cost_vs_mean"] == 1.0
    for row in record["rows"][1:]:
        assert row["iterations_per_s"] > 0
        assert row["update_ms"] > 0
        assert len(row["update_ms_values"]) == 2


SB3_UPDATE = SCRIPT.parent / "bench_sb3_update.py"


def test_bench_sb3_update_quick(tmp_path: Path) -> None:
    out = tmp_path / "sb3_update.json"
    command = [sys.executable, str(SB3_UPDATE), "--device", "cpu", "--tasks", "2", "--hidden-size", "16"]
    command += ["--batch-per-task", "2", "--repeats", "2", "--warmup", "1", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    records = json.loads(out.read_text())
    methods = {record["method"] for record in records}
    assert methods == {
        "mtsac/mean",
        "sb3_multitask_sac/mean",
        "mtsac/fairgrad",
        "sb3_multitask_sac/fairgrad",
        "sb3_sac",
    }
    for record in records:
        assert record["K"] == 2
        assert record["hidden_size"] == 16
        assert len(record["ms_values"]) == 2
        assert record["ms_median"] > 0
    assert "ratio" in completed.stdout


def test_gpu_checks_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal happens only without CUDA")
    script = SCRIPT.parent / "gpu_checks.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    completed = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, env=env, check=False
    )
    assert completed.returncode == 2
    assert not (tmp_path / "out").exists()
    assert completed.stderr.strip().splitlines() == [
        "error: no CUDA device visible to torch; these checks need one"
    ]


def test_bench_update_proxy_quick(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    command = [sys.executable, str(SCRIPT.parent / "bench_update_proxy.py"), "--combiners", "fairgrad"]
    command += ["--vmap", "--tasks", "3", "--repeats", "3", "--warmup", "2", "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {row["method"]: row for row in record["records"]}
    assert list(rows) == ["mean", "fairgrad", "fairgrad/vmap"]
    assert rows["mean"]["ops_ratio_to_mean"] == 1.0
    for row in rows.values():
        assert row["ops"] > 0
        assert row["ops_all"] >= row["ops"]
        assert row["host_ms"] > 0
    # The vmap path dispatches more operations in all than the per-task gradients of the layers.
    assert rows["fairgrad/vmap"]["ops_all"] > rows["fairgrad"]["ops_all"]

