"""Day 06 -- read a .safetensors file by hand, zero-copy.

Layout: [8 bytes: header length N, little-endian u64][N bytes: JSON header][data bytes].
The header maps each name to {"dtype", "shape", "data_offsets": [begin, end]}, offsets counted
from the first data byte; the optional "__metadata__" entry holds free-form strings.

Lesson: notes/day_06_safetensors.md        Check: pytest checkers/day_06
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors file (CPU tensors, file dtypes).

    The tensors are views of one copy-on-write memory map of the file: nothing is read until a
    tensor is touched, and writing to a tensor never changes the file. A corrupt file raises a
    one-line ValueError naming the file (and the tensor, where there is one).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, the 8-byte header length is missing)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} is larger than the file ({size} bytes): truncated or not safetensors")
        header = _parse_header(path, f.read(n))
        start, data_len = 8 + n, size - 8 - n
        entries = [_check_entry(path, name, info, data_len) for name, info in header.items()
                   if name != "__metadata__"]
        _check_tiling(path, entries, data_len)
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    out = {}
    for name, dtype, shape, (begin, end) in entries:
        if end == begin:  # torch.frombuffer refuses zero elements
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            numel = math.prod(shape)
            out[name] = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + begin).reshape(shape)
    return out


def _parse_header(path: str, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:  # json recurses once per nesting level: '[[[[...' is a crash otherwise
        raise ValueError(f"{path}: the header nests too deeply") from None
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError and _no_duplicates' error
        raise ValueError(f"{path}: the header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header must be a JSON object, got {type(header).__name__}")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: __metadata__ must be an object of strings")
    return header


def _no_duplicates(pairs: list) -> dict:
    """JSON parsers disagree on a repeated key (json.loads keeps the last, others the first): refuse it."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        raise ValueError(f"duplicate key {next(k for k, _ in pairs if k in seen or seen.add(k))!r}")
    return d


def _check_entry(path: str, name: str, info, data_len: int):
    """(name, torch dtype, shape, (begin, end)) after checking every field against the file."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ValueError(f"{where}: entry must be an object with dtype, shape and data_offsets")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"{where}: unknown dtype {info['dtype']!r} (known: {', '.join(DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise ValueError(f"{where}: shape {shape!r} must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise ValueError(f"{where}: data_offsets {offsets!r} must be [begin, end], non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_len:
        raise ValueError(f"{where}: data_offsets [{begin}, {end}] out of range (the data section has {data_len} bytes)")
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        raise ValueError(f"{where}: data_offsets span {end - begin} bytes, but shape {shape} of "
                         f"{info['dtype']} needs {nbytes}")
    return name, dtype, shape, (begin, end)


def _check_tiling(path: str, entries, data_len: int) -> None:
    """The tensors must cover the data section exactly, in offset order: no overlap, no hole,
    nothing after the last one (bytes no tensor owns could hide a second file)."""
    end, before = 0, None
    for begin, stop, name in sorted((begin, end, name) for name, _, _, (begin, end) in entries):
        if begin < end:
            raise ValueError(f"{path}: tensors {before!r} and {name!r} overlap (data_offsets share bytes)")
        if begin > end:
            raise ValueError(f"{path}: tensor {name!r} starts at {begin}, leaving a hole after byte {end}")
        end, before = stop, name
    if end != data_len:
        raise ValueError(f"{path}: the data section has {data_len} bytes, the tensors cover {end}")


def _is_uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
