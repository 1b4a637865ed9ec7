"""TensorBoard scalars written directly: the event-file record format and the
few protobuf fields it needs, so TensorFlow is not needed (`write_scalars`).
"""

from __future__ import annotations

import os
import pathlib
import struct
import time
from typing import Any

import numpy as np


# ---------------------------------------------------------- TensorBoard
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall: float, scalars: dict[str, float] | None = None,
           version: str | None = None) -> bytes:
    ev = b"\x09" + struct.pack("<d", wall) + b"\x10" + _varint(step)
    if version is not None:
        ev += _field_bytes(3, version.encode())
    if scalars:
        summary = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" +
                         struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        ev += _field_bytes(5, summary)
    return ev


def _record(data: bytes) -> bytes:
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", _masked_crc(n)) + data + struct.pack(
        "<I", _masked_crc(data))


def write_scalars(logdir: str | os.PathLike, step: int,
                  metrics: dict[str, Any]) -> None:
    """Appends numeric `metrics` (nested dicts flattened with '/') as scalars."""
    logdir = pathlib.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / "events.out.tfevents.nat_jax"
    flat = {}
    for k, v in metrics.items():
        items = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, x in items:
            number = isinstance(x, (int, float)) and not isinstance(x, bool)
            if number and np.isfinite(x):
                flat[k if sub is None else f"{k}/{sub}"] = float(x)
    with open(path, "ab") as f:
        if f.tell() == 0:
            f.write(_record(_event(0, time.time(), version="brain.Event:2")))
        f.write(_record(_event(step, time.time(), flat)))
