"""Day 22 -- benchmarking one engine: TTFT, tok/s, memory, scaling, launches per token.

Lesson: notes/day_22_benchmark.md        Check: pytest checkers/day_22
Run it on every engine and HF: `tinyinfer bench` (shared/bench.py calls your benchmark()).
"""
import sys
import time

import torch

from shared.runtime import gpu  # chooses GPU or simulator before numba loads
from numba import cuda


@cuda.jit
def empty_kernel():
    """Does nothing: timing it measures only what a launch costs."""
    pass


def synthetic_prompt(vocab_size: int, n: int) -> list[int]:
    """n deterministic token ids spread over the vocabulary (the content does not change the cost)."""
    return [(17 + 31 * i) % vocab_size for i in range(n)]


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def launch_overhead_s(samples: int = 20) -> float:
    """Host seconds per launch of an empty kernel (compiled first, GPU synchronized at the end)."""
    # TODO(day 22): one untimed launch (compiles), sync, time `samples` launches, sync, divide.
    raise NotImplementedError("Day 22: launch_overhead_s is not written yet -- edit days/day_22/benchmark.py "
                              "(lesson: notes/day_22_benchmark.md)")


def _generate(engine, ids, n):
    """One generation -> (engine.stats, kernel launches made for each new token).

    shared.runtime.gpu.LAUNCHES counts every launch through shared.runtime.gpu.launch; the launches made
    between two yielded tokens belong to the later token.
    """
    # TODO(day 22): iterate engine.generate_ids(ids, max_new_tokens=n, ignore_eos=True), reading gpu.LAUNCHES at
    # each yielded token; raise if the engine made fewer than n tokens.
    raise NotImplementedError("Day 22: _generate (one timed generation) is not written yet -- edit "
                              "days/day_22/benchmark.py (lesson: notes/day_22_benchmark.md)")


def benchmark(engine, *, prompt_tokens: int = 16, new_tokens: int = 8, context_lengths=(16, 32),
              prompt_lengths=(8, 16), warmup: int = 1, launch_samples: int = 20, progress: bool = False) -> dict:
    """Measure one engine (an Engine, or a zero-argument factory that builds one); returns a flat dict.

    Timings come from engine.stats after engine.generate_ids (the engine syncs every token when
    it samples); every run asks for ignore_eos=True, so it makes exactly the tokens asked for. Keys:
    prompt_tokens, new_tokens, warmup; ttft_s, prefill_tok_s (= prompt_tokens / ttft_s),
    decode_tok_s (= engine.stats.decode_tok_s), ms_per_token -- all from the main run;
    decode_vs_context: [{"context", "decode_tok_s", "ms_per_token"}] one per context length;
    prefill_vs_prompt: [{"prompt_tokens", "prefill_s" (TTFT of a 1-token run), "prefill_tok_s"}];
    peak_allocated_bytes, peak_reserved_bytes (torch.cuda.max_memory_*; 0 off the GPU);
    launches_per_token (mean over the main run's decode steps, prefill excluded),
    launch_overhead_s, launch_overhead_per_token_s (their product).
    """
    # TODO(day 22): build the engine if given a factory; validate; warm up; reset CUDA peak memory;
    # run the main, per-context and per-prompt-length generations with _generate; fill the dict.
    raise NotImplementedError("Day 22: benchmark is not written yet -- edit days/day_22/benchmark.py "
                              "(lesson: notes/day_22_benchmark.md)")