"""Reading what an offline Weights & Biases run wrote, without wandb's server or its sync command.

An offline run keeps everything in ``<dir>/wandb/offline-run-*/run-<id>.wandb``: wandb's
transaction log, a LevelDB-style log (a 7-byte file header, then 32 KiB blocks of records, each
with a 7-byte header: CRC32, length, kind) whose records are ``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every record of a ``.wandb`` transaction log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    records, pending, position = [], b"", _HEADER
    while position + _HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _HEADER:  # the block's tail is padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        if kind == 0 and length == 0:  # zero padding to the block's end
            position += left_in_block
            continue
        payload = data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        pending = payload if kind in (_FULL, _FIRST) else pending + payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_run_log(wandb_dir: Path) -> Path:
    """The transaction log of the one offline run under ``wandb_dir``."""
    logs = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    return logs[0]


def history(path: Path) -> dict[int, dict[str, Any]]:
    """The logged rows, by step: ``{step: {key: value}}`` (videos as their JSON description)."""
    rows: dict[int, dict[str, Any]] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
        }
        step = int(items.pop("_step"))
        rows.setdefault(step, {}).update(items)
    return rows


def run_config(path: Path) -> dict[str, Any]:
    """The run's config, as its last config update left it."""
    config: dict[str, Any] = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        update = (
            record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        )
        for item in update:
            config[item.key] = json.loads(item.value_json)
    return config
