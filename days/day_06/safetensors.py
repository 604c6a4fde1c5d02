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

# TODO(day 06): map every safetensors dtype string to a torch dtype:
# F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL (F8_E4M3 / F8_E5M2 if you like).
DTYPES: dict[str, torch.dtype] = {}


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors file (CPU tensors, file dtypes).

    The tensors are views of one copy-on-write memory map of the file: nothing is read until a
    tensor is touched, and writing to a tensor never changes the file. A corrupt file raises a
    one-line ValueError naming the file (and the tensor, where there is one).
    """
    raise NotImplementedError("Day 06: load_safetensors is not written yet -- edit days/day_06/safetensors.py "
                              "(lesson: notes/day_06_safetensors.md)")
