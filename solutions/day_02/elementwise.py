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
    col, row = cuda.grid(2)   # x (the fastest-moving index) runs along columns: coalesced loads
    if row < x.shape[0] and col < x.shape[1]:
        v = float32(x[row, col])
        out[row, col] = v / (float32(1.0) + math.exp(-v))


@cuda.jit
def silu_mul_kernel(gate, up, out):
    """One thread per (row, col): out = silu(gate) * up, computed in float32."""
    col, row = cuda.grid(2)
    if row < gate.shape[0] and col < gate.shape[1]:
        g = float32(gate[row, col])
        out[row, col] = g / (float32(1.0) + math.exp(-g)) * float32(up[row, col])


def _as_2d(t: torch.Tensor, name: str) -> torch.Tensor:
    """A 1-D tensor becomes one row (a view, strides kept); 2-D passes through as it is."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t
    raise ValueError(f"{name} must be 1-D or 2-D [rows, cols], got shape {tuple(t.shape)}: reshape it first")


def _check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"{name} must be float32 or float16, got {t.dtype}")


def _launch_2d(kernel, out2d: torch.Tensor, block, *args) -> None:
    """Cover [rows, cols] with blocks of (cols-threads, rows-threads)."""
    bx, by = block
    rows, cols = out2d.shape
    if rows and cols:
        gpu.launch(kernel, (gpu.cdiv(cols, bx), gpu.cdiv(rows, by)), (bx, by), *args, out2d)


def silu(x: torch.Tensor, *, block: tuple = (64, 4)) -> torch.Tensor:
    """x * sigmoid(x) for a 1-D or 2-D float32/float16 tensor, in x's dtype.

    Any strides work (a transposed view, a sliced column): the kernel indexes x[row, col] and
    Numba follows the strides. `block` = (threads along columns, threads along rows).
    """
    _check_float(x, "x")
    gpu.require_device(x)
    x2d = _as_2d(x, "x")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch_2d(silu_kernel, out.view(x2d.shape), block, x2d)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, block: tuple = (64, 4)) -> torch.Tensor:
    """silu(gate) * up for same-shape, same-dtype 1-D or 2-D tensors, in gate's dtype (any strides)."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"silu_mul: gate is {tuple(gate.shape)} {gate.dtype}, up is {tuple(up.shape)} {up.dtype}; "
                         "they must match")
    _check_float(gate, "gate")
    gpu.require_device(gate, up)
    g2d, u2d = _as_2d(gate, "gate"), _as_2d(up, "up")
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    _launch_2d(silu_mul_kernel, out.view(g2d.shape), block, g2d, u2d)
    return out
