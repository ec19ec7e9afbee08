"""Read an offline W&B run's transaction log (``run-<id>.wandb``) back, for tests.

wandb ≥ 0.2x no longer ships a Python reader (its core is Go). The file is LevelDB's log format (wandb's
``datastore``): a 7-byte header (``:W&B`` + 2-byte version + 1-byte magic), then 32 KiB blocks of records, each a
7-byte header (CRC32C: 4, length: 2 little-endian, type: 1 = full, 2 = first, 3 = middle, 4 = last) and its
payload; a block's tail shorter than a header is padding. Each complete payload is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history_rows(path: Path) -> list[dict]:
    """Every ``wandb.log`` row of the run: {key: value}."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def run_config(path: Path) -> dict:
    config = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            for item in (record.run.config if kind == "run" else record.config).update:
                key = item.key or "/".join(item.nested_key)
                config[key] = json.loads(item.value_json)
    return config


def run_record(path: Path):
    """The run's own record (group, display name, tags)."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    raise AssertionError(f"{path} holds no run record")
