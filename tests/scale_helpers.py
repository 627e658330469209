"""Shared builders for the sharded-source tests: shard folders cut from the real SmolLM2 rows in
every streamed layout, a raw safetensors writer (bfloat16 without torch), and readers of the
results dataset."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from conftest import SMOLLM2_SAMPLE

SAFETENSORS_CODES = {np.dtype("float64"): "F64", np.dtype("float32"): "F32",
                     np.dtype("float16"): "F16", np.dtype("int64"): "I64",
                     np.dtype("int32"): "I32", np.dtype("uint8"): "U8"}


def write_safetensors(path, tensors: dict, *, bf16: tuple = ()) -> str:
    """A safetensors file written byte by byte; keys in `bf16` (float32 arrays) are stored as
    bfloat16 by truncation (their top 16 bits, which widen back exactly)."""
    header, blobs, offset = {}, [], 0
    for key, array in tensors.items():
        array = np.ascontiguousarray(array)
        if key in bf16:
            data = (array.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
            code = "BF16"
        else:
            data = array.astype(array.dtype.newbyteorder("<")).tobytes()
            code = SAFETENSORS_CODES[array.dtype]
        header[key] = {"dtype": code, "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return str(path)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """What a bfloat16 store keeps of float32 values (truncation), widened back."""
    bits = values.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def real_rows():
    with np.load(SMOLLM2_SAMPLE, allow_pickle=False) as data:
        return data["logits_theta"], data["logits_t"]


def make_real_shards(folder: Path) -> Path:
    """The 12 real rows cut into five shards, one per streamed layout:
    a: safetensors float16 [4, V]; b: stored npz float32 [3, V]; c: compressed npz float16
    [2, V]; d: safetensors bfloat16 [1, 3, V] with a mask dropping position t=1;
    e: stored npz float64 [2, V] with a 2-d mask dropping row 0 ... and 1 kept."""
    theta, target = real_rows()
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "a.safetensors", {"logits_theta": theta[0:4],
                                                 "logits_t": target[0:4]})
    np.savez(folder / "b.npz", logits_theta=theta[4:7].astype(np.float32),
             logits_t=target[4:7].astype(np.float32))
    np.savez_compressed(folder / "c.npz", logits_theta=theta[7:9], logits_t=target[7:9])
    write_safetensors(folder / "d.safetensors",
                      {"logits_theta": theta[9:12].astype(np.float32)[None],
                       "logits_t": target[9:12].astype(np.float32)[None],
                       "mask": np.array([[1, 0, 1]], dtype=np.uint8)},
                      bf16=("logits_theta", "logits_t"))
    np.savez(folder / "e.npz", logits_theta=theta[0:2].astype(np.float64)[::-1],
             logits_t=target[0:2].astype(np.float64), attention_mask=np.array([0, 1]))
    return folder


def read_results(path) -> "object":
    """The results dataset as a pandas frame, in (shard, row) order."""
    import pyarrow.parquet as pq

    frame = pq.read_table(path).to_pandas()
    return frame.sort_values(["shard", "row"], kind="stable").reset_index(drop=True)


def part_tables(path) -> dict:
    """{part file name: Arrow table} of a results dataset."""
    import pyarrow.parquet as pq

    return {p.name: pq.read_table(p) for p in sorted(Path(path).glob("part-*.parquet"))}
