"""`tinyinfer bench`: measure the engine (KV cache and prefix recompute) against HF transformers.

- `benchmark(engine, ...)` (day 22; its reference is shared/reference/benchmark.py): one
  engine's TTFT, prefill and decode tok/s, peak memory, decode tok/s vs context, prefill time vs
  prompt length, kernel launches per decode step and what those launches cost on the host.
- `hf_benchmark(...)`: the same numbers for HF transformers (eager attention, greedy generate).
- `run(...)` / `main(argv)`: build the engines, measure, and write bench.json, bench.md and two
  PNG plots into an output folder. Runs on the CPU with `--model tiny` and tiny lengths.
  `--quant w8a16` (day 42; `w8a8`, day 43; `w8a8-smooth`, day 46) adds the int8 engine to the same run: its graph and
  eager rows, its ratio to the fp16 rows, its kernels, and how many greedy tokens it shares with the fp16 engine.
  `--kv-int8` (day 44, alone or with --quant) does the same for the engine with an int8 KV cache,
  and reports the bytes of both engines' KV pools.
- The roofline share of each row divides the track's `decode_bytes` (day 42: weights, scales,
  norms, the KV cache at the run's middle context, activations) by the time per token and the
  GPU's theoretical bandwidth.
Every run makes exactly the tokens asked for (EOS is ignored), after `warmup` untimed runs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

from shared.models import TINY_DIR
from shared.reference.benchmark import _sync, synthetic_prompt

GPU_DEFAULTS = dict(prompt_tokens=512, new_tokens=64, contexts=(512, 1024, 2048, 4096, 8192),
                    prompt_lengths=(128, 512, 1024, 2048, 4096))
CPU_DEFAULTS = dict(prompt_tokens=16, new_tokens=8, contexts=(16, 32, 64), prompt_lengths=(8, 16, 32, 64))


# ---- HF transformers baseline -------------------------------------------------------------------------
def hf_benchmark(model_dir, dtype, device, *, prompt_tokens: int, new_tokens: int,
                 context_lengths, prompt_lengths, warmup: int = 1, progress: bool = False) -> dict:
    """The same numbers for AutoModelForCausalLM (eager attention, greedy, exactly new_tokens)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="eager")
    model = model.to(device).eval()
    vocab = model.config.vocab_size
    cuda = torch.device(device).type == "cuda"

    class TokenClock:   # a generate() streamer: put() is called with the prompt, then with each new token
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def timed(n_prompt, n_new):
        """(TTFT, decode tok/s) of one greedy run making exactly n_new tokens."""
        ids = torch.tensor([synthetic_prompt(vocab, n_prompt)], device=device)
        clock = TokenClock()
        _sync()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, pad_token_id=0, streamer=clock)
        new = clock.times[-n_new:]           # the streamer gets each token as a CPU tensor: synced
        rate = (n_new - 1) / (new[-1] - new[0]) if n_new > 1 and new[-1] > new[0] else float("nan")
        return new[0] - t, rate

    for _ in range(warmup):
        timed(min(8, prompt_tokens), 2)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "warmup": warmup,
           "decode_vs_context": [], "prefill_vs_prompt": []}
    bar = tqdm(total=1 + len(context_lengths) + len(prompt_lengths), desc="hf baseline", disable=not progress,
               file=sys.stderr)
    out["ttft_s"], out["decode_tok_s"] = timed(prompt_tokens, new_tokens)
    out["prefill_tok_s"] = prompt_tokens / out["ttft_s"]
    out["ms_per_token"] = 1e3 / out["decode_tok_s"]
    bar.update()
    for c in context_lengths:
        r = timed(c, new_tokens)[1]
        out["decode_vs_context"].append({"context": c, "decode_tok_s": r, "ms_per_token": 1e3 / r})
        bar.update()
    for p in prompt_lengths:
        t = timed(p, 1)[0]
        out["prefill_vs_prompt"].append({"prompt_tokens": p, "prefill_s": t, "prefill_tok_s": p / t})
        bar.update()
    bar.close()
    out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated() if cuda else 0
    out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved() if cuda else 0
    return out


# ---- the runner ----------------------------------------------------------------------------------------
def _fit(lengths, limit: int, what: str) -> list[int]:
    """Clamp lengths to what the context window allows (the longest becomes the limit), deduplicated."""
    out = sorted({min(int(n), limit) for n in lengths if int(n) >= 1})
    if any(int(n) > limit for n in lengths):
        print(f"note: {what} clamped to {limit} (context limit minus new tokens)", file=sys.stderr)
    return out


def weight_bytes(weights) -> int:
    """Bytes of weights one decode token reads: every layer's matrices (fused or not, int8 with its
    scales or not) and norms, the final norm and the lm_head once (a tied lm_head is the embedding
    table; the embedding itself reads one row)."""
    from shared.quant import QuantWeight

    def size(t):
        return t.nbytes if isinstance(t, QuantWeight) else t.numel() * t.element_size()
    total = size(weights.final_norm) + size(weights.lm_head)
    for L in weights.layers:
        fused = L.wqkv is not None and L.w_gate_up is not None
        mats = [L.wqkv, L.w_gate_up] if fused else [L.wq, L.wk, L.wv, L.w_gate, L.w_up]
        total += sum(size(t) for t in mats + [L.wo, L.w_down, L.attn_norm, L.mlp_norm])
    return total


def q4_bytes(out: dict, weights) -> dict:
    """decode_bytes' unquantized count with the weights and scales of the 4-bit matrices the model
    holds (day 47): 16 bytes of nibbles per 32 weights, an fp16 d and m per group; the matrices
    still in the model dtype (an lm_head kept, or SmolLM2's tied Q8_0 embedding) as they are."""
    from shared.q4 import Q4Weight
    mats = [weights.lm_head] + [m for L in weights.layers for m in (L.wqkv, L.wo, L.w_gate_up, L.w_down)]
    out = dict(out, weights=0, scales=0)
    for m in mats:
        if isinstance(m, Q4Weight):
            out["weights"] += m.qs.numel()
            out["scales"] += m.d.nbytes + m.m.nbytes
        else:
            out["weights"] += m.numel() * m.element_size()
    return out


def bytes_per_token(engine, context: int) -> dict:
    """The track's decode_bytes (day 42, else the reference) for this engine's model, dtype and
    quantization, at `context` positions: {kind: bytes}. w8a8 (and w8a8-smooth) stores the weights
    and scales of w8a16, so it is counted as w8a16 (its int8 copies of the activations, a byte per input value
    and a scale per token, are left out: a few KB against the weights' MBs)."""
    from shared.course import registry
    from shared.engine.quant import INT8_ACTIVATIONS, Q4_MODES
    fn = registry.resolve("decode_bytes", engine.track)
    q = engine.quant
    if q is not None and q.mode in Q4_MODES:            # day 47: count the Q4Weights the engine holds
        return q4_bytes(fn(engine.config, None, context=context, dtype_bytes=engine.dtype.itemsize), engine.weights)
    mode = None if q is None else "w8a16" if q.mode in INT8_ACTIVATIONS else q.mode
    out = fn(engine.config, mode, context=context,
             group_size=None if q is None else q.group_size, head=True if q is None else q.head,
             dtype_bytes=engine.dtype.itemsize)
    if getattr(engine, "kv_int8", False):     # day 44: a row of hd int8 values and a 2-byte scale
        from shared.reference.kv_int8 import kv_row_bytes
        hd = engine.config.head_dim
        out["kv"] = out["kv"] // kv_row_bytes(hd, False, engine.dtype.itemsize) * kv_row_bytes(hd, True)
    return out


def kv_pool_bytes(engine, max_len: int) -> int:
    """Bytes of the KV cache the engine decodes in for requests up to max_len (every pool, int8
    scales included; a static cache's k and v)."""
    b = engine.runner(max_len).backend
    if hasattr(b, "pools"):
        tensors = b.pools()
    elif hasattr(b, "kv"):
        tensors = (b.kv.k, b.kv.v)
    else:
        tensors = tuple(t for t in (getattr(b, "k", None), getattr(b, "v", None)) if t is not None)
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_bandwidth_bytes_s() -> float | None:
    """The GPU's theoretical memory bandwidth: 2 transfers per clock x bus width (from the driver)."""
    try:
        from numba import cuda
        dev = cuda.get_current_device()
        return 2 * dev.MEMORY_CLOCK_RATE * 1e3 * dev.GLOBAL_MEMORY_BUS_WIDTH / 8
    except Exception:
        return None


def _captured_step(engine, context: int, max_len: int | None = None):
    """(graph, runner): the engine's greedy decode step at `context`, captured once (reference
    graphs), as the engine replays it (forward, greedy pick and its feedback), on a cache of the
    size the engine gives requests of max_len tokens (the timed runs' size: a kernel may cost
    more in a bigger pool)."""
    from shared.engine.runner import ModelRunner
    from shared.reference.graphs import DecodeGraphs
    backend = engine.cache_backend(engine.cache_size(max(max_len or 0, context + 2)))
    runner = ModelRunner(engine.ops, engine.weights, backend, engine.device, graphs_cls=DecodeGraphs)
    ids = synthetic_prompt(engine.config.vocab_size, context)
    runner.forward(ids, 0)
    runner.ids_buf.fill_(ids[-1])
    runner.decode_on_device(context)                    # captures the greedy decode step
    graph, _ = next(iter(runner.greedy_graphs.graphs.values()))
    return graph, runner


def gpu_ms_per_token(engine, context: int, reps: int = 50, max_len: int | None = None) -> float | None:
    """Kernel time of one decode step at `context` (in the cache of _captured_step): the captured
    step replayed back to back, so no host time is in it. None where the track has no cache yet."""
    import torch
    if not engine.on_gpu or not engine.caps.cache:
        return None
    graph, runner = _captured_step(engine, context, max_len)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    runner.release()
    return start.elapsed_time(end) / reps


def kernel_name(name: str) -> str:
    """A readable kernel name: numba's mangled `_ZN<len>module...<len>name B...` gives its Python
    name (the last length-prefixed part); a C++ template name is cut short."""
    if name.startswith("_ZN"):
        i, parts = 3, []
        while i < len(name) and name[i].isdigit():
            j = i
            while name[j].isdigit():
                j += 1
            n = int(name[i:j])
            parts.append(name[j:j + n])
            i = j + n
        if parts:
            return parts[-1]
    return name.split("(")[0][:60]


def kernel_breakdown(engine, context: int, reps: int = 10, max_len: int | None = None) -> list[dict] | None:
    """Where a decode token's GPU time goes, kernel by kernel (torch.profiler over `reps` replays
    of the captured step): [{kernel, launches, us}] per token, most time first. None where the
    track has no cache or the profiler sees no kernels (CUPTI missing)."""
    import collections
    import torch
    if not engine.on_gpu or not engine.caps.cache:
        return None
    from torch.profiler import ProfilerActivity, profile
    graph, runner = _captured_step(engine, context, max_len)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    runner.release()
    agg = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            a = agg[kernel_name(e.name)]
            a[0] += 1
            a[1] += getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
    rows = [{"kernel": k, "launches": n / reps, "us": us / reps} for k, (n, us) in agg.items()]
    return sorted(rows, key=lambda r: -r["us"]) or None


def track_note(engine) -> str:
    """One line: which track ran, what the engine used, and how to time the other track."""
    from shared.course import registry
    from shared.course.syllabus import published
    done, total = len(registry.finished(engine.track)), len(published())
    cpu = "" if engine.on_gpu else (
        " On the CPU these timings measure Python overhead and machine load, not kernels: differences between "
        "modes here (cache vs recompute included) are within noise and mean nothing; run on a GPU to compare."
        + (" The tiny model's weights are random." if Path(engine.model_dir).name == TINY_DIR else ""))
    if engine.track == "solutions":
        return (f"Track `solutions`: the reference solutions of all {total} published days "
                f"({engine.caps.describe()}).") + cpu
    mine = "none of your days is finished yet, so every component is the PyTorch reference" if not done else \
        f"your {done} finished day(s), the PyTorch reference for the rest"
    return (f"Track `days`: {mine} ({engine.caps.describe()}); `tinyinfer bench --track solutions` times the "
            "reference solutions." + ("" if engine.caps.cache else
                                      " GPU time and launches stay empty until day 20 (the KV cache) is finished.")) + cpu


def _prime(engine, lengths, new_tokens: int) -> None:
    """Size the cache for the longest run and capture the graphs of every length bucket a timed
    run will touch (a server does this at start-up); longest first, so one cache serves them all.
    A run from an n-token prompt decodes at lengths n+1 .. n+new_tokens-1."""
    vocab = engine.config.vocab_size
    for n in sorted(set(lengths), reverse=True):
        engine.runner(n + new_tokens)
        for prompt in (n, n + new_tokens - 2):        # its first and its last decode step
            list(engine.generate_ids(synthetic_prompt(vocab, prompt), max_new_tokens=2, ignore_eos=True))


def run(model: str | None = None, *, track: str | None = None, dtype: str | None = None, contexts=None,
        prompt_lengths=None, prompt_tokens: int | None = None, new_tokens: int | None = None, warmup: int = 1,
        out_dir="build/bench/latest", hf: bool = True, naive: bool = True, naive_max_context: int = 2048,
        graphs: bool | None = None, benchmark_fn=None, progress: bool = True, peer: bool = False,
        llama_bench: str | None = None, gguf: str | None = None, quant: str | None = None,
        quant_group: int | None = None, quant_head: bool = True, kv_int8: bool = False,
        smooth_alpha: float | None = None) -> dict:
    """Benchmark the engine -- graph-replayed decode, eager decode, prefix recompute -- and HF in
    one run; write the report. model None: SmolLM2 on a GPU, tiny without one. quant: also the
    engine with quantized weights (its graph and eager rows), in the same run; kv_int8: with an int8
    KV cache (alone or with quant)."""
    import torch
    from shared.runtime import gpu  # chooses the tier before numba loads
    from shared.engine import Engine
    from shared.engine.quant import check_options
    qopts = check_options(quant, quant_group, quant_head, kv_int8, smooth_alpha)   # one line before any model loads
    model = model or ("tiny" if gpu.SIM else "smollm2")
    if qopts is not None and qopts.mode == "gguf":           # the model's GGUF: one line before any kernel
        from shared import models
        from shared.engine.q4_model import check_gguf
        check_gguf(models.resolve(model))
    engine = Engine(model, track=track, dtype=dtype, graphs=False)
    d = GPU_DEFAULTS if engine.on_gpu else CPU_DEFAULTS
    new_tokens = new_tokens or d["new_tokens"]
    limit = engine.max_seq - new_tokens
    prompt_tokens = min(prompt_tokens or d["prompt_tokens"], limit)
    contexts = _fit(contexts or d["contexts"], limit, "context lengths")
    prompt_lengths = _fit(prompt_lengths or d["prompt_lengths"], limit, "prompt lengths")
    if benchmark_fn is None:
        from shared.course import registry
        benchmark_fn = registry.resolve("benchmark", engine.track)   # day 22 once finished, else the reference
    use_graphs = engine.caps.graphs if graphs is None else graphs and engine.caps.graphs
    peak = peak_bandwidth_bytes_s() if engine.on_gpu else None
    meta = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "model": str(model),
            "model_dir": str(engine.model_dir), "track": engine.track, "tier": gpu.TIER,
            "device": str(engine.device), "gpu_name": torch.cuda.get_device_name() if engine.on_gpu else None,
            "dtype": str(engine.dtype).removeprefix("torch."), "engine": engine.caps.describe(),
            "benchmark_fn": f"{benchmark_fn.__module__}.{benchmark_fn.__name__}",
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "contexts": contexts,
            "prompt_lengths": prompt_lengths, "warmup": warmup, "torch": torch.__version__,
            "weight_bytes_per_token": weight_bytes(engine.weights), "peak_bandwidth_bytes_s": peak,
            "track_note": track_note(engine)}
    longest = max(prompt_tokens, *contexts) + new_tokens        # the cache the timed runs decode in
    meta["gpu_ms_per_token"] = gpu_ms_per_token(engine, prompt_tokens, max_len=longest)
    try:                                      # a profiler failure must not lose the rest of the report
        meta["kernels_per_token"] = kernel_breakdown(engine, prompt_tokens, max_len=longest)
    except Exception as e:
        meta["kernels_per_token"] = None
        meta["kernels_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    results = {}
    kw = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, warmup=warmup, progress=progress)
    modes = ([("graph", True, True)] if use_graphs else []) + [("cached", True, False)] + \
            ([("naive", False, False)] if naive else [])
    for name, cache, graphed in modes:
        engine.use_cache, engine.use_graphs = cache, graphed
        if name == "naive":
            small = [c for c in contexts if c <= naive_max_context] or contexts[:1]
            results[name] = benchmark_fn(engine, context_lengths=small, prompt_lengths=prompt_lengths,
                                         **{**kw, "prompt_tokens": min(prompt_tokens, naive_max_context)})
            continue
        if graphed:
            _prime(engine, [prompt_tokens, *contexts], new_tokens)
        results[name] = benchmark_fn(engine, context_lengths=contexts, prompt_lengths=prompt_lengths, **kw)
    engine.use_cache, engine.use_graphs = True, use_graphs
    middle = prompt_tokens + new_tokens // 2                  # the main run's middle context
    meta["decode_bytes"] = {"context": middle, "unquantized": bytes_per_token(engine, middle)}
    meta["kv_pool_bytes"] = kv_pool_bytes(engine, longest)
    if qopts is not None or kv_int8:
        quantized(model, track, dtype, qopts, engine, results, meta, benchmark_fn, use_graphs=use_graphs,
                  contexts=contexts, prompt_lengths=prompt_lengths, longest=longest, kv_int8=kv_int8, **kw)
    if hf:
        results["hf"] = hf_benchmark(engine.model_dir, engine.dtype, engine.device, context_lengths=contexts,
                                     prompt_lengths=prompt_lengths, **kw)
    peers = {}
    if peer:
        peers["torch.compile"] = _peer(engine, prompt_tokens, new_tokens)
    if llama_bench or gguf:
        from shared.peer import llama_bench as run_llama_bench
        peers["llama.cpp"] = run_llama_bench(llama_bench, gguf)
    for name, r in [*results.items(), *peers.items()]:
        ms = r.get("ms_per_token")
        kinds = meta["quant"]["decode_bytes"] if name in meta.get("quant", {}).get("rows", ()) else \
            meta["decode_bytes"]["unquantized"]
        r["roofline_pct"] = 100 * sum(kinds.values()) / (ms * 1e-3) / peak if peak and ms else None
    report = {"meta": meta, "results": results, "peers": peers}
    write_report(report, Path(out_dir))
    return report


def quantized(model, track, dtype, qopts, engine, results, meta, benchmark_fn, *, use_graphs, contexts, prompt_lengths,
              longest, prompt_tokens, new_tokens, warmup, progress, kv_int8=False) -> None:
    """The engine with quantized weights and/or an int8 KV cache in the same run: its graph and eager
    rows ("graph w8a16", "cached kv-int8", ...) in `results`; meta["quant"]: what it ran, its bytes
    per token and KV pool bytes, its GPU time and kernels per token, and how many greedy tokens it
    shares with the unquantized engine."""
    from shared.engine import Engine
    q = Engine(model, track=track, dtype=dtype, graphs=False, quant=qopts and qopts.mode,
               quant_group=qopts and qopts.group_size, quant_head=qopts.head if qopts else True, kv_int8=kv_int8,
               smooth_alpha=qopts and qopts.alpha)
    middle = meta["decode_bytes"]["context"]
    mode = "+".join(([qopts.mode] if qopts else []) + (["kv-int8"] if kv_int8 else []))
    flags = " ".join(([f"--quant {qopts.mode}"] if qopts else []) + (["--kv-int8"] if kv_int8 else []))
    info = {"mode": mode, "flags": flags, "engine": q.describe(), "weight_bytes_per_token": weight_bytes(q.weights),
            "decode_bytes": bytes_per_token(q, middle), "kv_pool_bytes": kv_pool_bytes(q, longest), "rows": [],
            "gpu_ms_per_token": gpu_ms_per_token(q, prompt_tokens, max_len=longest)}
    try:
        info["kernels_per_token"] = kernel_breakdown(q, prompt_tokens, max_len=longest)
    except Exception as e:                    # a profiler failure must not lose the rest of the report
        info["kernels_per_token"] = None
        info["kernels_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    kw = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, warmup=warmup, progress=progress)
    for name, graphed in ([("graph", True)] if use_graphs else []) + [("cached", False)]:
        q.use_cache, q.use_graphs = True, graphed
        if graphed:
            _prime(q, [prompt_tokens, *contexts], new_tokens)
        row = f"{name} {mode}"
        results[row] = benchmark_fn(q, context_lengths=contexts, prompt_lengths=prompt_lengths, **kw)
        info["rows"].append(row)
    q.use_graphs = use_graphs
    prompt = synthetic_prompt(engine.config.vocab_size, prompt_tokens)
    ours = list(engine.generate_ids(prompt, max_new_tokens=new_tokens, ignore_eos=True))
    theirs = list(q.generate_ids(prompt, max_new_tokens=new_tokens, ignore_eos=True))
    info["greedy_tokens_equal_to_unquantized"] = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                                                      len(ours))
    meta["quant"] = info


def _peer(engine, prompt_tokens: int, new_tokens: int) -> dict:
    """The torch.compile peer on the engine's weights; one line instead of numbers if it fails."""
    if not engine.on_gpu:
        return {"error": "the torch.compile peer runs on a GPU only"}
    try:
        from shared.peer import torch_compile_peer
        r = torch_compile_peer(engine.weights, synthetic_prompt(engine.config.vocab_size, prompt_tokens), new_tokens)
    except Exception as e:                    # a compiler failure must not lose the rest of the report
        return {"error": f"torch.compile peer failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    ours = list(engine.generate_ids(synthetic_prompt(engine.config.vocab_size, prompt_tokens),
                                    max_new_tokens=new_tokens, ignore_eos=True))
    same = next((i for i, (a, b) in enumerate(zip(ours, r.pop("tokens"))) if a != b), len(ours))
    r["greedy_tokens_equal_to_ours"] = same
    return r


def write_report(report: dict, out: Path) -> None:
    """bench.json, bench.md (tables) and decode_vs_context.png, prefill_vs_prompt.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "bench.md").write_text(markdown(report))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = report["meta"]
    title = f"{Path(m['model']).name}, {m['dtype']}, {m['gpu_name'] or m['device']}"
    for name, series, x, y, xl, yl in [
            ("decode_vs_context", "decode_vs_context", "context", "decode_tok_s", "context length (tokens)",
             "decode tokens / s"),
            ("prefill_vs_prompt", "prefill_vs_prompt", "prompt_tokens", "prefill_s", "prompt length (tokens)",
             "prefill time (s)")]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, r in report["results"].items():
            pts = r[series]
            ax.plot([p[x] for p in pts], [p[y] for p in pts], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xl), ax.set_ylabel(yl), ax.set_title(title), ax.legend(), ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)


def _fmt(x, scale=1.0, digits=1):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x * scale:,.{digits}f}"


def markdown(report: dict) -> str:
    m, res = report["meta"], report["results"]
    lines = [f"# tinyinfer bench: {Path(m['model']).name}", "",
             f"{m['date']} · {m['gpu_name'] or m['device']} · {m['dtype']} · track {m['track']} · "
             f"prompt {m['prompt_tokens']} + {m['new_tokens']} new tokens · warm-up {m['warmup']}", "",
             f"Weights read per token: {m.get('weight_bytes_per_token', 0) / 1e6:,.1f} MB · theoretical memory "
             f"bandwidth: {_fmt(m.get('peak_bandwidth_bytes_s'), 1e-12, 2)} TB/s · GPU time per decode token "
             f"(kernels only, one graph replayed back to back): {_fmt(m.get('gpu_ms_per_token'), 1, 3)} ms", "",
             m.get("track_note", ""), "",
             "| engine | TTFT ms | prefill tok/s | decode tok/s | wall ms/token | % of roofline | peak alloc MiB | "
             "peak reserved MiB | launches/token | launch overhead ms/token |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        lines.append(f"| {name} | {_fmt(r['ttft_s'], 1e3, 2)} | {_fmt(r['prefill_tok_s'])} | {_fmt(r['decode_tok_s'])} "
                     f"| {_fmt(r['ms_per_token'], 1, 3)} | {_fmt(r.get('roofline_pct'))} "
                     f"| {_fmt(r['peak_allocated_bytes'], 2 ** -20)} | {_fmt(r['peak_reserved_bytes'], 2 ** -20)} "
                     f"| {_fmt(r.get('launches_per_token'))} | {_fmt(r.get('launch_overhead_per_token_s'), 1e3, 3)} |")
    lines += ["", "Decode tok/s vs context length:", "", "| engine | " + " | ".join(str(c) for c in m["contexts"]) + " |",
              "|---|" + "---:|" * len(m["contexts"])]
    for name, r in res.items():
        by = {p["context"]: p["decode_tok_s"] for p in r["decode_vs_context"]}
        lines.append(f"| {name} | " + " | ".join(_fmt(by.get(c)) for c in m["contexts"]) + " |")
    lines += quant_lines(report)
    lines += peer_lines(report)
    lines += kernel_lines(m)
    if m.get("quant", {}).get("kernels_per_token"):
        lines += [line.replace("Where a decode token's GPU time goes", f"With {m['quant'].get('flags', '--quant ' + m['quant']['mode'])}: where "
                               "a decode token's GPU time goes", 1) for line in kernel_lines(m["quant"] | {
                                   "prompt_tokens": m["prompt_tokens"]})]
    return "\n".join(lines) + "\n"


def bytes_lines(m: dict) -> list[str]:
    """Bytes per decode token by kind (the track's decode_bytes), unquantized and quantized."""
    d = m.get("decode_bytes")
    if not d:
        return []
    cols = [("unquantized", d["unquantized"])] + ([(m["quant"]["mode"], m["quant"]["decode_bytes"])]
                                                   if m.get("quant") else [])
    lines = ["", f"Bytes per decode token (decode_bytes at context {d['context']}; the roofline share divides "
             "their sum by the time per token and the theoretical bandwidth):", "",
             "| kind | " + " | ".join(f"{name} MB" for name, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    for kind in d["unquantized"]:
        lines.append(f"| {kind} | " + " | ".join(f"{b[kind] / 1e6:,.2f}" for _, b in cols) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(b.values()) / 1e6:,.2f}**" for _, b in cols) + " |")
    if len(cols) == 2:
        lines.append(f"\nAt most {sum(cols[0][1].values()) / sum(cols[1][1].values()):.2f}x from the bytes alone "
                     "(what stays in the model dtype does not shrink).")
    return lines


def quant_lines(report: dict) -> list[str]:
    """The quantized engine against the unquantized one, same run."""
    m, res = report["meta"], report["results"]
    q = m.get("quant")
    lines = bytes_lines(m)
    if not q:
        return lines
    if q.get("kv_pool_bytes") and m.get("kv_pool_bytes"):
        lines += ["", f"KV cache on the device: {m['kv_pool_bytes'] / 1e6:,.2f} MB unquantized, "
                  f"{q['kv_pool_bytes'] / 1e6:,.2f} MB with {q.get('flags', q['mode'])} "
                  f"({q['kv_pool_bytes'] / m['kv_pool_bytes']:.3f}x)."]
    lines += ["", f"{q.get('flags', '--quant ' + q['mode'])}: {q['engine']}; greedy tokens equal to the unquantized engine's for the "
              f"first {q['greedy_tokens_equal_to_unquantized']} of {m['new_tokens']} (the main prompt).", ""]
    for row in q["rows"]:
        base = row.split()[0]
        if base in res and res[row]["decode_tok_s"] and res[base]["decode_tok_s"]:
            lines.append(f"- `{row}` vs `{base}`: decode {_fmt(res[row]['decode_tok_s'])} vs "
                         f"{_fmt(res[base]['decode_tok_s'])} tok/s = **{res[row]['decode_tok_s'] / res[base]['decode_tok_s']:.2f}x**")
    if q.get("gpu_ms_per_token") and m.get("gpu_ms_per_token"):
        lines.append(f"- GPU time per decode token (one graph replayed): {q['gpu_ms_per_token']:.3f} vs "
                     f"{m['gpu_ms_per_token']:.3f} ms = {m['gpu_ms_per_token'] / q['gpu_ms_per_token']:.2f}x")
    return lines


def kernel_lines(m: dict, top: int = 14) -> list[str]:
    """Where a decode token's GPU time goes (the profiler's view of one captured step)."""
    rows = m.get("kernels_per_token")
    if not rows:
        return [f"", f"Kernel breakdown not measured: {m['kernels_error']}"] if m.get("kernels_error") else []
    total = sum(r["us"] for r in rows)
    launches = sum(r["launches"] for r in rows)
    lines = ["", f"Where a decode token's GPU time goes (context {m['prompt_tokens']}, torch.profiler over the "
             f"captured step): {total:,.0f} us in {launches:,.0f} kernels", "",
             "| kernel | launches/token | us/token | share |", "|---|---:|---:|---:|"]
    for r in rows[:top]:
        lines.append(f"| `{r['kernel']}` | {r['launches']:,.0f} | {r['us']:,.1f} | {100 * r['us'] / total:.0f}% |")
    if len(rows) > top:
        rest = rows[top:]
        lines.append(f"| {len(rest)} more | {sum(r['launches'] for r in rest):,.0f} | "
                     f"{sum(r['us'] for r in rest):,.1f} | {100 * sum(r['us'] for r in rest) / total:.0f}% |")
    return lines


def peer_lines(report: dict) -> list[str]:
    """The peers' table: decode tok/s, and ours (the fastest engine mode) over theirs, same run."""
    peers = report.get("peers") or {}
    if not peers:
        return []
    res = report["results"]
    best = max((n for n in ("graph", "cached") if n in res), key=lambda n: res[n]["decode_tok_s"], default=None)
    ours = res[best]["decode_tok_s"] if best else None
    lines = ["", f"Peers on the same GPU, same weights, same run (ours = `{best}`: {_fmt(ours)} tok/s, wall "
             f"{_fmt(res[best]['ms_per_token'] if best else None, 1, 3)} ms/token, GPU "
             f"{_fmt(report['meta'].get('gpu_ms_per_token'), 1, 3)} ms/token):", "",
             "| peer | decode tok/s | wall ms/token | GPU ms/token | % of roofline | ours ÷ peer | note |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in peers.items():
        if "error" in r:
            lines.append(f"| {name} | - | - | - | - | - | {r['error']} |")
            continue
        tok_s = r.get("decode_tok_s") or r.get("tg128_tok_s")
        note = (f"greedy tokens equal to ours for the first {r['greedy_tokens_equal_to_ours']}"
                if "greedy_tokens_equal_to_ours" in r else
                f"llama-bench: pp512 {_fmt(r.get('pp512_tok_s'))} tok/s, tg128 (empty context) "
                f"{_fmt(r.get('tg128_tok_s'))} tok/s, {r.get('model_type')}")
        ratio = ours / tok_s if ours and tok_s else None
        lines.append(f"| {name} | {_fmt(tok_s)} | {_fmt(r.get('ms_per_token'), 1, 3)} "
                     f"| {_fmt(r.get('gpu_ms_per_token'), 1, 3)} | {_fmt(r.get('roofline_pct'))} "
                     f"| {_fmt(ratio, 1, 2)}{'×' if ratio else ''} | {note} |")
    return lines


# ---- command line ------------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 512,1024") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="'smollm2' (default on a GPU), 'tiny' (default without one), "
                   "'llama-1b' (a seeded random model of Llama-3.2-1B's shape) or an HF Llama directory")
    p.add_argument("--track", choices=("days", "solutions"), default=None,
                   help="'days' (default: your finished days, the reference for the rest) or 'solutions'")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--contexts", type=_ints, default=None, help="decode tok/s at these context lengths")
    p.add_argument("--prompt-lengths", type=_ints, default=None, help="prefill time at these prompt lengths")
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length of the main run (GPU default 512)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens each run makes (GPU default 64)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before measuring")
    p.add_argument("--out", default="build/bench/latest", help="folder for bench.json, bench.md and the plots")
    p.add_argument("--no-hf", action="store_true", help="skip the HF transformers baseline")
    p.add_argument("--no-naive", action="store_true", help="skip the prefix-recompute engine")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph engine (day 23)")
    p.add_argument("--naive-max-context", type=int, default=2048,
                   help="the prefix-recompute engine only runs contexts up to this length (it is quadratic)")
    p.add_argument("--peer", action="store_true", help="also time a torch.compile decode step (gpt-fast style) on "
                   "the same weights, in the same run (GPU)")
    p.add_argument("--llama-bench", default=None, metavar="PATH",
                   help="a llama-bench binary (default: one on PATH when --gguf is given)")
    p.add_argument("--gguf", default=None, metavar="FILE", help="the GGUF of this model for llama-bench")
    from shared.engine.quant import add_arguments as add_quant_arguments
    add_quant_arguments(p.add_argument_group("quantized weights (days 42-43) and KV cache (day 44): that engine too, "
                                             "same run"))
    spec = p.add_argument_group("speculative decoding (day 39): plain vs each method on shared/spec_prompts.py")
    spec.add_argument("--speculative", nargs="?", const="ngram,draft", default=None, metavar="METHODS",
                      help="run this benchmark instead: comma-separated methods, ngram and/or draft (default both)")
    spec.add_argument("--spec-k", default="4", metavar="K", help="tokens drafted per target step, 1..16 or auto")
    spec.add_argument("--draft-layers", type=int, default=None, metavar="L",
                      help="the self-draft's depth: the target's first L layers (default 4)")
    spec.add_argument("--reps", type=int, default=None, help="timed runs per prompt and method, best kept "
                      "(default 3 on a GPU, 1 on the CPU)")
    spec.add_argument("--prompts-per-family", type=int, default=None, metavar="N",
                      help="only the first N prompts of each family (default all 8)")


def run_speculative(args: argparse.Namespace) -> dict:
    """`tinyinfer bench --speculative`: shared/spec_bench.py, its report printed and written to --out."""
    from shared import spec_bench
    from shared.engine.speculative import parse_k
    bench_only = [f for f, v in (("--contexts", args.contexts), ("--prompt-lengths", args.prompt_lengths),
                                 ("--prompt-tokens", args.prompt_tokens), ("--peer", args.peer),
                                 ("--llama-bench", args.llama_bench), ("--gguf", args.gguf), ("--quant", args.quant),
                                 ("--quant-group", args.quant_group), ("--no-quant-head", args.no_quant_head),
                                 ("--kv-int8", args.kv_int8), ("--smooth-alpha", args.smooth_alpha is not None)) if v]
    if bench_only:
        raise ValueError(f"--speculative runs its own prompts and engines: drop {', '.join(bench_only)}")
    report = spec_bench.run(args.model, track=args.track, dtype=args.dtype,
                            methods=[m.strip() for m in args.speculative.split(",") if m.strip()],
                            k=parse_k(args.spec_k),
                            draft_layers=args.draft_layers,
                            new_tokens=args.new_tokens, reps=args.reps, per_family=args.prompts_per_family)
    paths = spec_bench.write(report, Path(args.out))
    print(spec_bench.markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return report


def run_args(args: argparse.Namespace) -> dict:
    if getattr(args, "speculative", None) is not None:
        return run_speculative(args)
    from shared.engine.quant import check_options
    check_options(args.quant, args.quant_group, not args.no_quant_head, args.kv_int8,
                  args.smooth_alpha)                    # one line, before any model
    report = run(args.model, track=args.track, dtype=args.dtype, contexts=args.contexts,
                 prompt_lengths=args.prompt_lengths, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                 warmup=args.warmup, out_dir=args.out, hf=not args.no_hf, naive=not args.no_naive,
                 graphs=False if args.no_graph else None,
                 naive_max_context=args.naive_max_context, peer=args.peer, llama_bench=args.llama_bench,
                 gguf=args.gguf, quant=args.quant, quant_group=args.quant_group, quant_head=not args.no_quant_head,
                 kv_int8=args.kv_int8, smooth_alpha=args.smooth_alpha)
    print(markdown(report))
    print(f"wrote {args.out}/bench.json, bench.md, decode_vs_context.png, prefill_vs_prompt.png")
    return report


def main(argv=None) -> int:
    """`tinyinfer bench ARGS`: argv is a list of strings, or the CLI's namespace with `bench_args`."""
    if isinstance(argv, argparse.Namespace):
        argv = argv.bench_args
    p = argparse.ArgumentParser(prog="tinyinfer bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    run_args(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
