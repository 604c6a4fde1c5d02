"""Lab (GPU, sm_90): programmatic dependent launch (PDL) for EVERY numba kernel of the engine's decode step.

numba's PTX is patched as it is made: each kernel (.entry) starts with
    griddepcontrol.launch_dependents;   // the next kernel may be scheduled now
    griddepcontrol.wait;                // the previous kernel completed and its writes are visible
Both are no-ops for a launch without the programmatic attribute, so one set of cubins serves both runs:
  plain: launches as today;   pdl: every numba launch with programmatic_stream_serialization
(torch's own kernels launch as before and so serialize as usual). The next kernel's launch and block scheduling
overlap the previous one's tail; nothing of a kernel runs before its inputs are complete. Greedy tokens must equal.

Usage: PYTHONPATH=/tmp/site:$PWD python3 lab/g11/pdl_engine.py [llama-1b|smollm2 ...]
"""
import re
import sys
import time

import torch
from shared.runtime import gpu
import numba.cuda.dispatcher as nd
from numba.cuda import codegen

PDL = [False]
_real_get_asm_strs = codegen.CUDACodeLibrary.get_asm_strs
_real_config, _real_nd_config = gpu._launch_config, nd.LaunchConfig
_pdl_configs: dict = {}
PATCHED = [0]


def patch_ptx(ptx: str) -> str:
    """griddepcontrol.launch_dependents + wait before the first instruction of every .entry."""
    lines = ptx.split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if ".entry" in line:
            while lines[i].strip() != "{":          # the parameter list
                i += 1
                out.append(lines[i])
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith((".", "//"))):
                out.append(lines[i])                # declarations stay first
                i += 1
            out.append("\tgriddepcontrol.launch_dependents;")
            out.append("\tgriddepcontrol.wait;")
            PATCHED[0] += 1
            continue
        i += 1
    return "\n".join(out)


def _get_asm_strs(self, cc=None):
    ptxes = _real_get_asm_strs(self, cc)
    if not getattr(self, "_pdl_patched", False):
        ptxes[:] = [patch_ptx(p) if ".entry" in p else p for p in ptxes]
        self._pdl_patched = True
    return ptxes


def _config(grid, block, shared_bytes):
    if not PDL[0]:
        return _real_config(grid, block, shared_bytes)
    key = (grid, block, shared_bytes)
    if key not in _pdl_configs:
        _pdl_configs[key] = gpu.LaunchConfig(grid=grid, block=block, shmem_size=shared_bytes,
                                             programmatic_stream_serialization=True)
    return _pdl_configs[key]


def _nd_config(**kw):
    return _real_nd_config(**kw, programmatic_stream_serialization=True) if PDL[0] else _real_nd_config(**kw)


def install():
    codegen.CUDACodeLibrary.get_asm_strs = _get_asm_strs
    gpu._launch_config = _config
    nd.LaunchConfig = _nd_config


def decode_time(engine, ids, new):
    """Seconds per decode token: generate(new + 1) minus generate(1) (the prefill), best of 3."""
    def run(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = list(engine.generate_ids(ids, max_new_tokens=n, ignore_eos=True))
        torch.cuda.synchronize()
        return time.perf_counter() - t, out
    run(new + 1)
    best, tokens = 1e9, None
    for _ in range(3):
        a, _ = run(1)
        b, tokens = run(new + 1)
        best = min(best, (b - a) / new)
    return best, tokens


def main(models):
    from shared.engine import Engine
    print(torch.cuda.get_device_name(), flush=True)
    install()
    for model in models:
        e = Engine(model, track="solutions", dtype="fp16")
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, e.config.vocab_size - 100, (512,), generator=g).tolist()
        rows = {}
        for round_ in range(int(__import__("os").environ.get("ROUNDS", "2"))):
            for name in ("plain", "pdl"):
                e._runners.clear()                  # fresh graphs, captured with this launch mode
                PDL[0] = name == "pdl"
                try:
                    s, tokens = decode_time(e, ids, 128)
                except Exception as err:
                    print(f"  {model} {name} FAILED {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
                    PDL[0] = False
                    return
                PDL[0] = False
                rows.setdefault(name, []).append((s, tokens))
                print(f"  {model:<9} round {round_} {name:<5} {1 / s:8.1f} tok/s ({s * 1e6:7.1f} us/token)", flush=True)
        same = all(t == rows["plain"][0][1] for name in rows for _, t in rows[name])
        best = {name: min(s for s, _ in v) for name, v in rows.items()}
        print(f"{model}: plain {1 / best['plain']:.1f} tok/s, pdl {1 / best['pdl']:.1f} tok/s, "
              f"pdl/plain {best['plain'] / best['pdl']:.3f}x; greedy tokens equal: {same}; "
              f"kernels patched: {PATCHED[0]}", flush=True)
        del e
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:] or ["llama-1b"])
