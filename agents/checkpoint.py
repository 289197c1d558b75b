"""Crash-safe checkpoint files that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save`` file holding only tensors and plain values (dicts, lists, numbers,
strings), so it loads with ``torch.load(weights_only=True)``: opening a checkpoint someone else made
cannot execute code. Beside it, ``<file>.sha256`` holds the SHA-256 of its bytes.

Writing is atomic: the bytes go to a temporary file in the same folder, which is fsynced and then
renamed over the target, and the checksum file is written the same way afterwards. A process killed
at any moment therefore leaves either the previous pair or the new one; a data file whose checksum
file is missing or stale (killed between the two renames) is reported as incomplete.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "checksum_path", "load_checkpoint", "save_checkpoint", "verify_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with, or not one of ours."""


def checksum_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}.sha256")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide checkpoints from the other users of a cluster
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` and its checksum to ``path.sha256``, each atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = Path(path)
    _atomic_write(path, data)
    _atomic_write(checksum_path(path), (hashlib.sha256(data).hexdigest() + "\n").encode())
    return path


def verify_checkpoint(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path`` after checking them against ``path.sha256`` (when that file exists)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    sums = checksum_path(path)
    if sums.is_file():
        expected = sums.read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointError(
                f"checkpoint {path} does not match its checksum: it is incomplete or was modified"
            )
    return data


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any problem is a one-line :class:`CheckpointError`."""
    data = verify_checkpoint(path)
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols on its way to refusing a file; the refusal
            # below is the one message that matters.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers: a pickle that would build
        # other objects (and possibly run code) ends here. torch's own message advises retrying with
        # weights_only=False, which is exactly what must not be done with an untrusted file.
        raise CheckpointError(
            f"checkpoint {path} is not a valid mtrl-fair checkpoint (damaged, or holding objects other than "
            "tensors and plain values); refusing to load it"
        ) from None
    except Exception as error:
        # A damaged archive fails in many ways inside torch.load: RuntimeError, EOFError,
        # zipfile.BadZipFile, but also ValueError ("negative seek value" for a truncated file),
        # UnicodeDecodeError, IndexError or TypeError for damaged records. All mean the same here.
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(error).__name__})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not an mtrl-fair checkpoint")
    return state
