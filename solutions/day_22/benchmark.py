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
    gpu.launch(empty_kernel, 1, 1)        # the first launch compiles: keep it out of the timing
    _sync()
    t = time.perf_counter()
    for _ in range(samples):
        gpu.launch(empty_kernel, 1, 1)
    _sync()
    return (time.perf_counter() - t) / samples


def _generate(engine, ids, n):
    """One generation -> (engine.stats, kernel launches made for each new token).

    shared.runtime.gpu.LAUNCHES counts every launch through shared.runtime.gpu.launch; the launches made
    between two yielded tokens belong to the later token.
    """
    per_token, seen = [], gpu.LAUNCHES
    for _ in engine.generate_ids(ids, max_new_tokens=n, ignore_eos=True):
        per_token.append(gpu.LAUNCHES - seen)
        seen = gpu.LAUNCHES
    if len(per_token) != n:
        raise RuntimeError(f"asked for {n} tokens, the engine made {len(per_token)}")
    return engine.stats, per_token


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
    if not hasattr(engine, "generate_ids"):
        engine = engine()
    lengths = [prompt_tokens, *context_lengths, *prompt_lengths]
    if new_tokens < 2 or min(lengths) < 1 or warmup < 0:
        raise ValueError("benchmark needs new_tokens >= 2, every length >= 1 and warmup >= 0")
    if max(lengths) + new_tokens > engine.max_seq:
        raise ValueError(f"longest length {max(lengths)} + {new_tokens} new tokens > the engine's max_seq "
                         f"{engine.max_seq}: use shorter lengths")
    vocab = engine.config.vocab_size
    on_cuda = torch.device(engine.device).type == "cuda"
    runs = [("main", prompt_tokens, new_tokens)] + [("context", c, new_tokens) for c in context_lengths] + \
           [("prompt", p, 1) for p in prompt_lengths]
    from tqdm import tqdm
    out = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "warmup": warmup,
           "decode_vs_context": [], "prefill_vs_prompt": []}
    for _ in range(warmup):            # JIT compilation and caches, not measured
        _generate(engine, synthetic_prompt(vocab, min(8, prompt_tokens)), 2)
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for kind, n, new in tqdm(runs, desc="benchmark", disable=not progress, file=sys.stderr):
        stats, launches = _generate(engine, synthetic_prompt(vocab, n), new)
        if kind == "main":
            out.update(ttft_s=stats.ttft_s, prefill_tok_s=n / stats.ttft_s, decode_tok_s=stats.decode_tok_s,
                       ms_per_token=1e3 / stats.decode_tok_s,
                       launches_per_token=sum(launches[1:]) / len(launches[1:]))   # decode steps only
        elif kind == "context":
            out["decode_vs_context"].append({"context": n, "decode_tok_s": stats.decode_tok_s,
                                             "ms_per_token": 1e3 / stats.decode_tok_s})
        else:
            out["prefill_vs_prompt"].append({"prompt_tokens": n, "prefill_s": stats.ttft_s,
                                             "prefill_tok_s": n / stats.ttft_s})
    out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated() if on_cuda else 0
    out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved() if on_cuda else 0
    out["launch_overhead_s"] = launch_overhead_s(launch_samples)
    out["launch_overhead_per_token_s"] = out["launches_per_token"] * out["launch_overhead_s"]
    return out
