"""The launch path every kernel in the course uses.

- `device()`: where tensors live in this tier (cuda on a GPU, cpu in the simulator).
- `stream()`: a numba stream wrapping torch's current CUDA stream, cached, so kernels and
  torch ops are ordered on one stream and a decode step can be captured in a CUDA graph.
- `launch(kernel, grid, block, *args)`: one place that configures a launch.
Torch tensors are passed to kernels as they are (CUDA array interface / simulator arrays).
"""
from __future__ import annotations

import warnings

from shared.tier import select

TIER = select()
SIM = TIER == "sim"

import torch  # noqa: E402
from numba import cuda  # noqa: E402

try:  # a small grid is the point of many checker launches: don't warn about it
    from numba.core.errors import NumbaPerformanceWarning
    warnings.simplefilter("ignore", NumbaPerformanceWarning)
except ImportError:  # pragma: no cover
    pass

_streams: dict[int, object] = {}


def device() -> torch.device:
    return torch.device("cpu" if SIM else "cuda")


def stream():
    """numba view of torch's current stream (0 in the simulator), cached per stream."""
    if SIM:
        return 0
    handle = torch.cuda.current_stream().cuda_stream
    s = _streams.get(handle)
    if s is None:
        s = _streams[handle] = cuda.external_stream(handle)
    return s


def launch(kernel, grid, block, *args, shared_bytes: int = 0):
    """kernel[grid, block, stream, shared_bytes](*args) on torch's current stream."""
    kernel[grid, block, stream(), shared_bytes](*args)


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of size b cover a items."""
    return (a + b - 1) // b


def require_device(*tensors: torch.Tensor, names: str = "") -> None:
    """Clear error when a tensor is not where kernels can read it."""
    want = device()
    for t in tensors:
        if t.device.type != want.type:
            raise ValueError(f"tensor on {t.device}, kernels in the {TIER} tier need {want}: "
                             f"move it with .to(shared.gpu.device())")
