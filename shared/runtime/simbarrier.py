"""Make Numba's CUDA simulator refuse a barrier that not every thread of the block reaches.

On a GPU, `cuda.syncthreads()` inside `if tid < s:` is undefined behaviour: it may hang, or
pass today and fail on the next GPU. Numba's simulator silently lets it through: its block
manager releases a barrier as soon as every *live* thread waits at *some* barrier, so threads
that exited or wait at another barrier are not noticed. This module replaces the simulator's
block loop with the same loop plus one check at each release:

- every waiting thread is at its n-th barrier (the same count) and at the same call site, and
- no thread of the block finished with fewer than n barriers.

Otherwise the launch fails at once with BarrierDivergence. When a launch fails, every thread of
the block is stopped before the error reaches the caller (numba leaves them running into the next
launch), and a shared array's first use is made under a lock. `install()` is called by
shared.runtime.gpu in the sim tier; it never touches the GPU path.
"""
from __future__ import annotations

import os
import sys
import time

JOIN_SECONDS = 30      # how long a failed launch waits for its block's threads to stop
MESSAGE = "cuda.syncthreads() not reached by every thread of the block: a barrier inside an `if`?"


class BarrierDivergence(RuntimeError):
    """Threads of one block disagree about which barrier they are at."""


def _call_site(skip: str) -> str:
    """file:line of the first frame outside the simulator: where the kernel called the barrier."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(skip):
        f = f.f_back
    return "?" if f is None else f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


def _divergence(threads, blocked, someone_left: bool) -> str | None:
    """A one-line description of the disagreement at this release, or None if all agree.
    Runs at every barrier of every block, so the common case (all agree) is one pass."""
    first = next(iter(blocked))
    n, site = first.barriers, first.barrier_site
    if any(t.barriers != n or t.barrier_site != site for t in blocked):
        sites = sorted({(t.barriers, t.barrier_site) for t in blocked})
        where = ", ".join(f"{s} (barrier #{k})" for k, s in sites)
        return f"{MESSAGE} (threads of one block wait at different barriers: {where})"
    if not someone_left:
        return None
    gone = [t for t in threads if t not in blocked and not t.is_alive() and getattr(t, "barriers", 0) < n]
    if gone:
        t = gone[0]
        return (f"{MESSAGE} (block {tuple(t.blockIdx)}: {len(blocked)} threads wait at {site}, "
                f"thread {tuple(t.threadIdx)} and {len(gone) - 1} more finished without reaching it)")
    return None


def install() -> None:
    """Patch the simulator's thread and block classes (idempotent)."""
    import numpy as np
    from numba.cuda.simulator import kernel as sim

    if getattr(sim.BlockManager, "_tinyinfer_checked", False):
        return
    skip = os.path.dirname(sim.__file__)
    plain_sync = sim.BlockThread.syncthreads

    def syncthreads(self):
        self.barriers = getattr(self, "barriers", 0) + 1
        self.barrier_site = _call_site(skip)
        plain_sync(self)

    def run(self, grid_point, *args):
        """numba's BlockManager.run (same polling loop), with the divergence check at each release."""
        threads, live, blocked = [], set(), set()
        for block_point in np.ndindex(*self._block_dim):
            t = sim.BlockThread(lambda: self._f(*args), self, grid_point, block_point, self._debug)
            t.start()
            threads.append(t)
            live.add(t)
        while live:
            for t in live:
                if t.syncthreads_blocked:
                    blocked.add(t)
                elif t.exception:
                    _abort(threads)
                    raise t.exception[0].with_traceback(t.exception[1])
            if live == blocked:
                someone_left = len(live) < len(threads)
                failed = someone_left and next((t for t in threads if t.exception), None)
                if failed:                  # a thread that raised is not a divergence: report its error
                    _abort(threads)
                    raise failed.exception[0].with_traceback(failed.exception[1])
                problem = _divergence(threads, blocked, someone_left)
                if problem:
                    _abort(threads)
                    raise BarrierDivergence(problem)
                for t in blocked:
                    t.syncthreads_blocked = False
                    t.syncthreads_event.set()
                blocked = set()
            live = {t for t in live if t.is_alive()}
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    sim.BlockThread.syncthreads = syncthreads
    sim.BlockManager.run = run
    _lock_shared_arrays()
    sim.BlockManager._tinyinfer_checked = True


def _lock_shared_arrays() -> None:
    """The simulator makes a block's `cuda.shared.array` on the first call from a line (file and
    line are the key); two threads arriving together could each make one and keep a private copy.
    The same lookup, under one lock (and from the caller's frame, not a whole stack trace)."""
    import threading
    import numpy as np
    from numba.cuda.simulator import kernelapi
    types, numpy_support = kernelapi.types, kernelapi.numpy_support    # numba's own, whatever its version
    plain_array, lock = kernelapi.FakeCUDAShared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:       # dynamic shared memory, or numba's own refusal
            return plain_array(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                np_dtype = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                res = self._allocations[key] = np.empty(shape, np_dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


def _abort(threads) -> None:
    """Wake every waiting thread with its abort flag set, as the simulator does on an exception,
    then wait until every thread of the block has stopped. Numba's simulator leaves them running:
    a thread still inside the kernel holds its module's `cuda` swapped for this launch's fake one,
    so the next launch from that module would read this launch's blockDim, gridDim and shared
    arrays (wrong results in a later, unrelated test). A thread that never stops (an endless loop)
    is left behind after JOIN_SECONDS, as numba would leave it."""
    for t in threads:
        t.abort = True
        t.syncthreads_blocked = False
        t.syncthreads_event.set()
    deadline = time.monotonic() + JOIN_SECONDS
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
