"""Day 02 -- elementwise kernels on a 2-D grid: silu(x) and silu(gate) * up (SwiGLU's core).

Lesson: notes/day_02_elementwise.md        Check: pytest checkers/day_02
"""
import math

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda, float32


@cuda.jit
def silu_kernel(x, out):
    """One thread per (row, col): out = x / (1 + exp(-x)), computed in float32."""
    # TODO(day 02): col, row = cuda.grid(2); guard both against x.shape; load as float32, store silu.
    pass


@cuda.jit
def silu_mul_kernel(gate, up, out):
    """One thread per (row, col): out = silu(gate) * up, computed in float32."""
    # TODO(day 02): the same 2-D pattern; out[row, col] = silu(gate[row, col]) * up[row, col].
    pass


def silu(x: torch.Tensor, *, block: tuple = (64, 4)) -> torch.Tensor:
    """x * sigmoid(x) for a 1-D or 2-D float32/float16 tensor, in x's dtype.

    Any strides work (a transposed view, a sliced column): the kernel indexes x[row, col] and
    Numba follows the strides. `block` = (threads along columns, threads along rows).
    """
    raise NotImplementedError("Day 02: silu is not written yet -- edit days/day_02/elementwise.py "
                              "(lesson: notes/day_02_elementwise.md)")


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, block: tuple = (64, 4)) -> torch.Tensor:
    """silu(gate) * up for same-shape, same-dtype 1-D or 2-D tensors, in gate's dtype (any strides)."""
    raise NotImplementedError("Day 02: silu_mul is not written yet -- edit days/day_02/elementwise.py "
                              "(lesson: notes/day_02_elementwise.md)")
