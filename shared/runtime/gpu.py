"""The launch path every kernel in the course uses.

- `device()`: where tensors live in this tier (cuda on a GPU, cpu in the simulator).
- `stream()`: a numba stream wrapping torch's current CUDA stream, cached, so kernels and
  torch ops are ordered on one stream and a decode step can be captured in a CUDA graph.
- `launch(kernel, grid, block, *args)`: one place that configures a launch.
Torch tensors are passed to kernels as they are (CUDA array interface / simulator arrays).
"""
from __future__ import annotations

import ctypes
import os
import warnings

from shared.runtime.tier import select

TIER = select()
SIM = TIER == "sim"

import torch  # noqa: E402
from numba import cuda  # noqa: E402

if not SIM:  # the CUDA Python launch API under numba-cuda: the fast path calls it directly
    from cuda.core import LaunchConfig, launch as _core_launch  # noqa: E402

# A small grid is the point of many launches (checkers, a merge over 9 heads): don't warn about it.
# numba-cuda raises its own copy of NumbaPerformanceWarning, so match the message, not the class.
warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU under-utilization")

_streams: dict[int, object] = {}

if SIM:
    # The simulator runs one Python thread per CUDA thread and its barriers poll; a shorter
    # thread switch interval makes cuda.syncthreads() several times faster.
    import sys
    sys.setswitchinterval(5e-4)
    # A barrier that not every thread of a block reaches is undefined on a GPU; the simulator
    # would let it pass silently. Make it fail at once (shared/runtime/simbarrier.py).
    from shared.runtime import simbarrier
    simbarrier.install()


def _sim_arg(a):
    """The simulator is built for numpy arrays: hand it a zero-copy numpy view of a CPU tensor
    (stores of numpy scalars into torch tensors fail there, and element reads are faster)."""
    if isinstance(a, torch.Tensor) and a.dtype != torch.bfloat16:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(a.detach().numpy())   # wrapped: no copy, strided views allowed
    return a


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


LAUNCHES = 0  # kernels launched through `launch` so far (benchmarks count kernels per token)
FAST = os.environ.get("TINYINFER_FAST_LAUNCH", "1") != "0"


def launch(kernel, grid, block, *args, shared_bytes: int = 0):
    """kernel[grid, block, stream, shared_bytes](*args) on torch's current stream.

    On a GPU, after the first call for a given argument-type pattern, this skips numba's
    per-call type inference and argument marshalling (~50 us) and hands the compiled kernel
    the arguments straight from the tensors' metadata (shared/DESIGN.md, "launch path").
    TINYINFER_FAST_LAUNCH=0 turns that off.
    """
    global LAUNCHES
    LAUNCHES += 1
    if SIM:
        kernel[grid, block, 0, shared_bytes](*[_sim_arg(a) for a in args])
        return
    if not FAST:
        kernel[grid, block, stream(), shared_bytes](*args)
        return
    key = (kernel, tuple(_arg_key(a) for a in args))
    entry = _compiled.get(key)
    if entry is None:
        kernel[grid, block, stream(), shared_bytes](*args)   # compiles, validates, launches
        _compiled[key] = _fast_entry(kernel, args, key)
        return
    if entry is False:
        kernel[grid, block, stream(), shared_bytes](*args)
        return
    cufunc, packers = entry
    kargs = []
    for pack, a in zip(packers, args):
        pack(a, kargs)
    _core_launch(_core_stream(), _launch_config(grid, block, shared_bytes), cufunc, *kargs)


# ---- the fast path's pieces ------------------------------------------------------------------
_compiled: dict = {}
_configs: dict = {}
_core_streams: dict = {}


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        # contiguous CUDA tensors only: numba types them Array(dtype, ndim, 'C')
        return (a.dtype, a.dim()) if a.is_cuda and a.is_contiguous() else None
    return type(a)


def _fast_entry(kernel, args, key):
    """(compiled kernel, per-argument packers) or False when this call shape must stay slow."""
    from numba.cuda import types as nt
    if None in key[1] or getattr(kernel, "extensions", None):
        return False
    argtypes = tuple(kernel.typeof_pyval(a) for a in args)
    overload = kernel.overloads.get(argtypes)
    if overload is None or overload.debug or overload.cooperative:
        return False
    packers = []
    for t in argtypes:
        if isinstance(t, nt.Array) and t.layout == "C":
            packers.append(_pack_tensor)
        elif isinstance(t, nt.Integer):
            packers.append(_pack_ctype(getattr(ctypes, f"c_{t}")))
        elif t == nt.float32:
            packers.append(_pack_ctype(ctypes.c_float))
        elif t == nt.float64:
            packers.append(_pack_ctype(ctypes.c_double))
        elif t == nt.boolean:
            packers.append(_pack_ctype(ctypes.c_bool))
        else:
            return False
    return overload._codelibrary.get_cufunc().kernel, packers


def _pack_tensor(t, out):
    """numba's array ABI: meminfo, parent, size, itemsize, data, shape..., strides (bytes)..."""
    item = t.element_size()
    out += (0, 0, t.numel(), item, t.data_ptr(), *t.shape, *[s * item for s in t.stride()])


def _pack_ctype(ctype):
    def pack(v, out):
        out.append(ctype(v))
    return pack


def _launch_config(grid, block, shared_bytes):
    key = (grid, block, shared_bytes)
    cfg = _configs.get(key)
    if cfg is None:
        cfg = _configs[key] = LaunchConfig(grid=grid, block=block, shmem_size=shared_bytes)
    return cfg


def _core_stream():
    handle = torch.cuda.current_stream().cuda_stream
    s = _core_streams.get(handle)
    if s is None:
        from numba.cuda.cudadrv import driver
        s = _core_streams[handle] = driver._to_core_stream(stream())
    return s


def compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the current GPU; None in the simulator, which emulates every instruction
    (day 26's tensor-core mma included) whatever the GPU it stands for."""
    if SIM:
        return None
    return torch.cuda.get_device_capability()


def gpu_name() -> str:
    return "the simulator" if SIM else torch.cuda.get_device_name()


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of size b cover a items."""
    return (a + b - 1) // b


def require_device(*tensors: torch.Tensor, names: str = "") -> None:
    """Clear error when a tensor is not where kernels can read it."""
    want = device()
    for t in tensors:
        if t.device.type != want.type:
            raise ValueError(f"tensor on {t.device}, kernels in the {TIER} tier need {want}: "
                             f"move it with .to(shared.runtime.gpu.device())")
