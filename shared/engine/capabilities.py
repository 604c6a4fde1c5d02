"""What the engine does on a track: one answer for the engine, `tinyinfer status` and the checkers.

- cache: a static KV cache on the decode path. Needs a finished `decode_attention` (day 20) --
  the reference reads the length back to the host, so on a GPU the engine recomputes the prefix
  until the learner's capture-safe kernel exists. The CPU reference run always caches.
- paged: the cache is a pool of KV blocks (PagedCache) instead of one [max_len] slab. Needs a
  cache and the `paged` feature (day 31); its blocks, writes and decode attention come from the
  registry like any kernel (days 28-30, else the reference).
- graphs: decode steps replayed from CUDA graphs. Needs the `graphs` feature (day 23), a cache
  to replay against, and a real GPU (the simulator has no graphs). With graphs the engine runs
  its own device-fed loop (shared/engine/decode_loop.py) instead of day 18's `generate`: each
  step samples on the device and feeds the next, the host reads tokens one step behind.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.course import registry


@dataclass(frozen=True)
class Capabilities:
    track: str
    tier: str
    reference_only: bool     # no GPU and no --simulate: the PyTorch reference on the CPU
    cache: bool
    graphs: bool
    paged: bool              # the cache is a pool of KV blocks (day 31)

    def describe(self, dtype: str | None = None) -> str:
        where = "PyTorch reference on the CPU" if self.reference_only else \
            f"{self.track} track on the {'GPU' if self.tier == 'gpu' else 'CUDA simulator'}"
        how = ("paged KV cache" if self.paged else "static KV cache") if self.cache else \
            "prefix recompute (no KV cache)"
        return f"{where}, " + (f"{dtype}, " if dtype else "") + how + \
            (", CUDA graphs with on-device token feedback" if self.graphs else "")


def capabilities(track: str | None = None, tier: str | None = None, simulate: bool = False) -> Capabilities:
    from shared.runtime.tier import detect
    track = registry.check_track(track or registry.default_track())
    tier = tier or detect()
    reference_only = tier == "sim" and not simulate
    cache = reference_only or registry.source("decode_attention", track).day is not None
    graphs = tier == "gpu" and cache and registry.has_feature("graphs", track)
    paged = cache and registry.has_feature("paged", track)
    return Capabilities(track, tier, reference_only, cache, graphs, paged)


# The names the engine calls while it generates; every other provided name is a building block
# (a day's exercise that later days build on, e.g. softmax or matmul) or a tool (benchmark).
_ALWAYS = ("load_model", "load_config", "Tokenizer", "embedding", "rmsnorm", "add_rmsnorm", "linear",
           "rope_frequencies", "rope", "attention", "mlp", "silu_mul", "forward", "sample", "generate", "stream")
_CACHE = ("KVCache", "kv_write", "decode_attention")
_PAGED = ("PagedCache", "BlockAllocator", "paged_kv_write", "paged_decode_attention")


def engine_components(caps: Capabilities) -> set[str]:
    """The components on the engine's path in this mode (for `tinyinfer status` and progress messages)."""
    names = set(_ALWAYS)
    if (registry.source("forward", caps.track).day or 0) >= 54:
        names |= {"norm_linear", "linear_add"}    # day 54's forward: the decode step's fused GEMVs
    if caps.cache:
        names |= set(_PAGED if caps.paged else _CACHE)
    if caps.graphs:
        names.add("DecodeGraphs")
        names.discard("generate")        # the engine's device-fed loop replaces day 18's (decode_loop.py)
    return names
