"""Tests of mtrl_fair.agents.checkpoint: atomic, checksummed files loaded with weights_only."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from mtrl_fair.agents.checkpoint import (
    CheckpointError,
    checksum_path,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def example_state(seed: int = 0) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "format": "mtrl-fair/test",
        "version": 1,
        "weights": {"w": torch.randn(64, 64, generator=generator), "b": torch.zeros(64)},
        "counters": {"iteration": 10 + seed, "updates": 3},
        "names": ["reach-v3", "push-v3"],
        "lr": 3e-4,
        "flag": True,
        "nothing": None,
    }


def assert_states_equal(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for key in a:
            assert_states_equal(a[key], b[key])
    else:
        assert a == b
        assert type(a) is type(b)


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    state = example_state()
    returned = save_checkpoint(state, path)
    assert returned == path
    assert_states_equal(load_checkpoint(path), state)
    # It is an ordinary torch.save file that weights_only loads.
    assert_states_equal(torch.load(path, weights_only=True), state)


def test_save_creates_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoints" / "ckpt.pt"
    save_checkpoint(example_state(), path)
    assert_states_equal(load_checkpoint(str(path)), example_state())


def test_checksum_file_holds_the_sha256(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(), path)
    sums = checksum_path(path)
    assert sums == tmp_path / "ckpt.pt.sha256"
    assert sums.is_file()
    assert sums.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify_checkpoint(path) == path.read_bytes()


def test_files_are_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(), path)
    assert path.stat().st_mode & 0o777 == 0o644
    assert checksum_path(path).stat().st_mode & 0o777 == 0o644


def test_a_modified_byte_fails_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_stale_checksum_is_reported(tmp_path: Path) -> None:
    """A new data file beside the old checksum (killed between the two renames) is refused."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(0), path)
    old_sums = checksum_path(path).read_bytes()
    save_checkpoint(example_state(1), path)
    checksum_path(path).write_bytes(old_sums)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999])
def test_a_truncated_file_without_checksum_is_refused(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    checksum_path(path).unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert type(info.value) is CheckpointError
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_every_truncation_of_a_small_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    buffer = io.BytesIO()
    torch.save({"format": "x", "w": torch.arange(300.0)}, buffer)
    data = buffer.getvalue()
    for length in range(0, len(data), 7):
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_a_truncated_file_with_its_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_the_payload_really_runs_code_when_unpickled_normally(tmp_path: Path) -> None:
    """The premise of the next tests: an ordinary unpickle of this payload creates the marker."""
    marker = tmp_path / "control-marker"
    handle = pickle.loads(pickle.dumps(WritesMarker(marker)))
    handle.close()
    assert marker.exists()


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "mtrl-fair/mtsac", "payload": WritesMarker(marker)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the unusual pickle protocol
        with pytest.raises(CheckpointError, match=r"refusing to load") as info:
            load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_malicious_torch_save_file_with_a_valid_checksum_is_refused(tmp_path: Path) -> None:
    """The checksum only detects damage; the attacker can write it too. weights_only is the guard."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"format": "mtrl-fair/mtsac", "w": torch.ones(3), "payload": WritesMarker(marker)}, buffer)
    path.write_bytes(buffer.getvalue())
    checksum_path(path).write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
    with pytest.raises(CheckpointError, match=r"objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint either


def test_a_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match="not an mtrl-fair checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="not an mtrl-fair checkpoint"):
        load_checkpoint(path)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


def test_a_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(0), path)
    save_checkpoint(example_state(1), path)  # overwriting too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]


def test_a_failed_rename_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(0), path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError("simulated crash during the rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(example_state(1), path)
    monkeypatch.undo()

    # Same files, same bytes, no temporary file left behind, and the old state still loads.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert_states_equal(load_checkpoint(path), example_state(0))


def test_a_crash_between_the_two_renames_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data file was replaced but not its checksum: the pair is reported as incomplete."""
    path = tmp_path / "ckpt.pt"
    save_checkpoint(example_state(0), path)
    real_replace = os.replace
    calls = []

    def replace_once(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) > 1:
            raise OSError("simulated crash before the checksum rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(example_state(1), path)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    # Saving again repairs the pair.
    save_checkpoint(example_state(1), path)
    assert_states_equal(load_checkpoint(path), example_state(1))
