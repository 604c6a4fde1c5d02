"""Day 01 -- your first kernel: out = a + b.

Lesson: notes/day_01_vector_add.md        Check: pytest checkers/day_01
"""
import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda


@cuda.jit
def vector_add_kernel(a, b, out, n):
    """One thread per element: out[i] = a[i] + b[i] for every i < n."""
    # TODO(day 01): find this thread's global index, guard it, write one element.
    pass


def vector_add(a: torch.Tensor, b: torch.Tensor, *, block_size: int = 256) -> torch.Tensor:
    """Return a new tensor a + b for 1-D tensors of equal length and dtype.

    Raise ValueError (one line, what is wrong) for tensors that are not 1-D or differ in
    shape or dtype. Launch enough blocks of `block_size` threads to cover every element,
    with shared.runtime.gpu.launch, and return the output.
    """
    raise NotImplementedError("Day 01: vector_add is not written yet -- edit days/day_01/vector_add.py "
                              "(lesson: notes/day_01_vector_add.md)")
