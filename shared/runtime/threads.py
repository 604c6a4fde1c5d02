"""How many CPU threads torch uses when the engine runs on the CPU (generate, bench).

torch starts one OpenMP thread per core. A decode step of a small model is hundreds of small
matrix products, each ending in a barrier where every thread waits for the slowest one. When
another program holds a core, one of ours is descheduled at every barrier and the whole step
waits for it. Measured with `generate` (the tiny model on a 2-core machine running two busy
loops): torch's 2 threads decoded 10.7 tok/s, one thread 425 tok/s. A SmolLM2-sized model on 16
cores with 8 busy: 16 threads under 0.5 tok/s, 4 threads 9.9.

So, unless the user chose (OMP_NUM_THREADS or MKL_NUM_THREADS), take the cores the 1-minute
load average calls idle, at least 1 and at most 4. The cap is because that average lags a
load that has just started: 4 threads on 16 busy cores lose less (2.7 tok/s against 4.2 for
one thread) than 8 or 16 do (under 0.5); an idle machine gives up a little (9.9 against 12).
"""
from __future__ import annotations

import os

USER_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MAX_DEFAULT = 4


def choose() -> tuple[int, str]:
    """(threads, why): the user's setting if there is a valid one, else the idle cores, capped."""
    for var in USER_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value), f"{var}={value}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = max(1, min(MAX_DEFAULT, cores - round(load)))
    return n, f"{cores} cores, load average {load:.1f}; set OMP_NUM_THREADS to choose"


def configure() -> int:
    """Give torch the chosen number of threads; return it."""
    import torch
    n, _ = choose()
    torch.set_num_threads(n)
    return n
