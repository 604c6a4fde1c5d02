"""Choose where kernels run -- the real GPU or Numba's CUDA simulator -- before numba loads.

The simulator is selected by the NUMBA_ENABLE_CUDASIM environment variable, which numba reads
once, at import. So every entry point (pytest plugin, CLI, lessons) calls `select()` first.
"""
from __future__ import annotations

import os
import sys

TIERS = ("gpu", "sim")


def detect() -> str:
    """'gpu' if a CUDA GPU is usable, else 'sim'. TINYINFER_TIER=sim|gpu overrides ('gpu' with no
    GPU torch can see is a ValueError: numba would fail later with a long traceback)."""
    forced = os.environ.get("TINYINFER_TIER", "").strip().lower()
    if forced:
        if forced not in TIERS:
            raise ValueError(f"TINYINFER_TIER={forced!r}: use 'gpu' or 'sim'")
        if forced == "gpu" and not _torch_sees_a_gpu():
            raise ValueError("TINYINFER_TIER=gpu, but torch sees no CUDA GPU here: unset TINYINFER_TIER "
                             "(or set it to 'sim') to run in the simulator")
        return forced
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "sim"
    return "gpu" if _torch_sees_a_gpu() else "sim"


def _torch_sees_a_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def select() -> str:
    """Detect the tier and configure numba for it. Call before the first `import numba`."""
    tier = detect()
    want = "1" if tier == "sim" else "0"
    if "numba" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != want:
        import numba
        if bool(numba.config.ENABLE_CUDASIM) != (tier == "sim"):
            raise RuntimeError(f"numba was imported before the tier ({tier}) was chosen; "
                               "import shared.runtime.tier and call select() first")
    os.environ["NUMBA_ENABLE_CUDASIM"] = want
    # Kernels run on torch's current stream, so numba need not synchronize a stream when it
    # imports a tensor through __cuda_array_interface__ -- and a sync would break graph capture.
    os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
    return tier
