"""Day 01 -- your first kernel: out = a + b.

Lesson: notes/day_01_vector_add.md        Check: pytest checkers/day_01
"""
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda


@cuda.jit
def vector_add_kernel(a, b, out, n):
    """One thread per element: out[i] = a[i] + b[i] for every i < n."""
    i = cuda.grid(1)          # blockIdx.x * blockDim.x + threadIdx.x
    if i < n:                 # the last block runs past the end
        out[i] = a[i] + b[i]


def vector_add(a: torch.Tensor, b: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Return a new tensor a + b for 1-D tensors of equal length and dtype.

    Raise ValueError (one line, what is wrong) for tensors that are not 1-D or differ in
    shape or dtype. Launch enough blocks of `block_size` threads to cover every element,
    with shared.runtime.gpu.launch, and return the output.
    """
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(f"vector_add takes 1-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"vector_add: a is {tuple(a.shape)} {a.dtype}, b is {tuple(b.shape)} {b.dtype}; they must match")
    gpu.require_device(a, b)
    n = a.shape[0]
    out = torch.empty_like(a)
    if n:
        gpu.launch(vector_add_kernel, gpu.cdiv(n, block_size), block_size, a, b, out, n)
    return out
