"""`tinyinfer perplexity`: does a quantized engine still compute the model? (day 45)

Each mode (the model dtype, --quant w8a16 / w8a8 / w8a8-smooth / ..., --kv-int8, or a mode joined
with +) gets its own engine, one after the other in one run, and two numbers:
- perplexity on the shipped public-domain text (shared/texts/), in strided windows, with the
  track's `perplexity` (day 45). A window is scored as the engine decodes: its first token, then
  the rest on top of the cache, so every row but the first reads its keys and values back from
  the cache -- from the int8 pool with --kv-int8 (a prompt's own attention reads its fresh k, v,
  which would hide the int8 cache entirely);
- greedy agreement with the unquantized engine over the benchmark prompts (shared/spec_prompts.py),
  with the track's `greedy_agreement`: the share of the baseline's tokens reproduced before the
  first difference.
With a smoothing mode (w8a8-smooth, day 46) the text's last `--calibration-tokens` tokens (512)
calibrate it and EVERY row scores only the tokens before them: no row is scored on the tokens
that calibrated the smoothing, and all rows score the same tokens.
perplexity.json, perplexity.md and perplexity.png in --out. Without a GPU the CPU reference runs
every mode (dequantize, then matmul; quantize, then dequantize the KV rows): the oracle a GPU run
is compared with. Modes whose day has not come yet are listed, not run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

from shared.engine import quant as quant_modes

TEXT = Path(__file__).resolve().parent / "texts" / "founding_documents.txt"
KV = "kv-int8"
DEFAULT_MODES = ("w8a16", "w8a8", "w8a8-smooth", KV)
TARGET = 0.01            # issue 17: w8a16 and kv-int8 perplexity within 1% of the unquantized engine's
TARGET_MODES = ("w8a16", KV)


def parse_modes(text: str | None) -> list[str]:
    """'w8a16,kv-int8,w8a8+kv-int8' -> the modes to run besides the baseline; one line if one cannot run."""
    if text is None:
        return list(DEFAULT_MODES)
    out = []
    for mode in (m.strip() for m in text.split(",")):
        if not mode or mode in ("base", "fp16", "fp32"):
            continue                              # the baseline always runs
        parts = mode.split("+")
        weights = [p for p in parts if p != KV]
        if len(weights) > 1 or len(parts) - len(weights) > 1 or len(parts) != len(set(parts)):
            raise ValueError(f"mode {mode!r}: at most one weight mode and {KV}, joined by + (e.g. w8a16+{KV})")
        if weights and weights[0] not in quant_modes.MODES:
            raise ValueError(f"unknown mode {weights[0]!r}: use {', '.join(quant_modes.RUNS)}, {KV}, or a weight "
                             f"mode + {KV}")
        if weights:
            quant_modes.check_options(weights[0])        # coming on a later day: one line
        if mode not in out:
            out.append(mode)
    return out


def engine_options(mode: str) -> dict:
    parts = mode.split("+") if mode != "base" else []
    weights = [p for p in parts if p != KV]
    return {"quant": weights[0] if weights else None, "kv_int8": KV in parts}


def check(window, stride, max_tokens, new_tokens, per_family, calibration_tokens=None) -> None:
    """One line for numbers that cannot run, before any model loads (the track's check_windows
    decides window and stride once the text's length is known)."""
    for name, v, low in (("--window", window, 2), ("--stride", stride, 1), ("--max-tokens", max_tokens, 2),
                         ("--new-tokens", new_tokens, 0), ("--prompts-per-family", per_family, 0),
                         ("--calibration-tokens", calibration_tokens, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if window is not None and stride is not None and stride >= window:
        raise ValueError(f"--stride must be below --window ({window}): each window's first token is context only")


def scorer(engine, window: int):
    """logits_fn for perplexity(): fp32 logits [len(ids), V], the first token prefilled, the rest on
    top of the cache (one chunk). Without a cache (a track before day 20): one forward."""
    import torch
    if not engine.use_cache:
        return engine.forward
    runner = engine.runner(window)

    def logits_fn(ids: list[int]) -> torch.Tensor:
        runner.reset()
        first = runner.forward(ids[:1], 0, logits_at=None)
        if len(ids) == 1:
            return first
        return torch.cat([first, runner.forward(ids[1:], 1, logits_at=None)])
    return logits_fn


def load_text(path) -> str:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--text {path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--text {path}: not UTF-8 text") from None


def split_calibration(ids: list[int], n: int) -> tuple[list[int], list[int]]:
    """(the tokens to score, the calibration tokens): the last n calibrate, the rest is scored."""
    if len(ids) - n < 2:
        raise ValueError(f"the text has {len(ids)} tokens: holding out {n} for calibration leaves fewer than 2 to "
                         "score; use a longer --text or a smaller --calibration-tokens")
    return ids[:-n], ids[-n:]


def run(model=None, *, track=None, dtype=None, modes=None, window=None, stride=None, text=None,
        max_tokens=None, new_tokens=None, per_family=None, quant_group=None, quant_head=True,
        smooth_alpha=None, calibration_tokens=None, progress=True) -> dict:
    """Every mode's perplexity and greedy agreement; returns the report (see markdown())."""
    from tqdm import tqdm
    from shared import spec_prompts
    from shared.course.registry import Ops
    from shared.engine import Engine
    from shared.runtime import gpu
    modes = parse_modes(modes) if isinstance(modes, str) or modes is None else parse_modes(",".join(modes))
    check(window, stride, max_tokens, new_tokens, per_family, calibration_tokens)
    if quant_group is not None or not quant_head:
        quant_modes.check_options("w8a16", quant_group, quant_head)
    smoothed = [m for m in modes if engine_options(m)["quant"] in quant_modes.SMOOTH_MODES]
    if not smoothed and (smooth_alpha is not None or calibration_tokens is not None):
        raise ValueError("--smooth-alpha and --calibration-tokens go with a w8a8-smooth mode")
    alpha = quant_modes.check_options(quant_modes.SMOOTH_MODES[0], smooth_alpha=smooth_alpha).alpha if smoothed else None
    text_path = Path(text) if text else TEXT
    body = load_text(text_path)
    base = Engine(model, track=track, dtype=dtype)
    track = base.track
    for mode in modes:                # what each mode needs on this track and model: one line before any scoring
        o = engine_options(mode)
        mode_alpha = smooth_alpha if o["quant"] in quant_modes.SMOOTH_MODES else None
        q = quant_modes.check_options(o["quant"], quant_group, quant_head, smooth_alpha=mode_alpha) if o["quant"] else None
        quant_modes.check_track(q, track, base.reference_only)
        quant_modes.check_kv_track(o["kv_int8"], track, base.reference_only)
        quant_modes.check_model(q, base.config, kernels=not base.reference_only)
    ops = Ops(track)                  # the track's perplexity / greedy_agreement (host Python, any tier)
    ids = base.tokenizer.encode(body)
    calibration = None
    if smoothed:                      # the calibration slice is held out of every row's scoring
        from shared.engine.smooth import CAL_TOKENS
        ids, calibration = split_calibration(ids, calibration_tokens or CAL_TOKENS)
    text_tokens = len(ids) + len(calibration or [])
    if max_tokens:
        ids = ids[:max_tokens]
    window = window or min(1024, base.max_seq)
    if window > base.max_seq:
        raise ValueError(f"--window {window} is longer than the model's context ({base.max_seq} tokens)")
    stride = stride or window // 2
    from shared.reference.perplexity import check_windows
    check_windows(len(ids), window, stride)
    new_tokens = (32 if base.on_gpu else 12) if new_tokens is None else new_tokens
    per_family = (8 if base.on_gpu else 2) if per_family is None else per_family
    prompts = [(f, name, p) for f, ps in spec_prompts.FAMILIES.items() for name, p in list(ps.items())[:per_family]]
    n_windows = 1 + max(0, -(-(len(ids) - window) // stride))      # the last one reaches the end
    report = {"model": str(base.model_dir), "track": track, "on_gpu": base.on_gpu,
              "device": gpu.gpu_name() if base.on_gpu else "CPU (the reference)",
              "dtype": str(base.dtype).removeprefix("torch."),
              "text": {"path": text_path.name, "sha256": hashlib.sha256(body.encode()).hexdigest(),
                       "tokens": len(ids), "chars": len(body)},
              "window": window, "stride": stride, "new_tokens": new_tokens, "prompts": len(prompts),
              "target": {"modes": list(TARGET_MODES), "within": TARGET}, "rows": [],
              "calibration": None if calibration is None else {
                  "tokens": len(calibration), "first": text_tokens - len(calibration), "text_tokens": text_tokens,
                  "scored": [0, len(ids)], "alpha": alpha},
              "coming": [{"mode": m, "day": d, "what": w} for m, (d, w) in quant_modes.MODES.items()
                         if m not in quant_modes.RUNS]}
    bar = tqdm(total=(1 + len(modes)) * (n_windows + len(prompts)), desc="perplexity", unit="step",
               disable=not progress)
    baseline_tokens = None
    for mode in ["base"] + modes:
        options = engine_options(mode)
        if options["quant"]:
            options.update(quant_group=quant_group, quant_head=quant_head)
        if options["quant"] in quant_modes.SMOOTH_MODES:
            options.update(smooth_alpha=smooth_alpha, calibration=calibration)
        engine = base if mode == "base" else Engine(model, track=track, dtype=dtype, **options)
        bar.set_description(f"{mode if mode != 'base' else report['dtype']}")
        fn = scorer(engine, window)
        t0 = time.perf_counter()

        def counted(w, fn=fn):
            out = fn(w)
            bar.update(1)
            return out
        ppl, nll, n = ops.perplexity(counted, ids, window=window, stride=stride)
        seconds = time.perf_counter() - t0
        tokens = []
        for family, name, prompt in prompts:
            p = engine.prompt_ids(prompt, chat=True)
            p = p[max(0, len(p) + new_tokens - engine.max_seq):]
            tokens.append(list(engine.generate_ids(p, max_new_tokens=new_tokens, ignore_eos=True)) if new_tokens else [])
            bar.update(1)
        if baseline_tokens is None:
            baseline_tokens = tokens
        agree = [ops.greedy_agreement(b, t) for b, t in zip(baseline_tokens, tokens) if b]    # none: not measured
        row = {"mode": report["dtype"] if mode == "base" else mode, "engine": engine.describe(),
               "ppl": ppl, "nll_sum": nll, "n_tokens": n, "bits_per_token": nll / n / math.log(2),
               "seconds": seconds,
               "greedy_agreement": sum(agree) / len(agree) if agree else None,
               "identical": sum(a == 1.0 for a in agree),
               "per_prompt": [{"family": f, "prompt": name, "agreement": a}
                              for (f, name, _), a in zip(prompts, agree)] if agree else []}
        report["rows"].append(row)
        if engine is not base:
            del engine
    bar.close()
    ref = report["rows"][0]["ppl"]
    for row in report["rows"]:
        row["ppl_vs_base"] = row["ppl"] / ref - 1
        row["meets_target"] = abs(row["ppl_vs_base"]) <= TARGET if row["mode"] in TARGET_MODES else None
    return report


def markdown(report: dict) -> str:
    t = report["text"]
    lines = [f"# Quality: perplexity and greedy agreement", "",
             f"{Path(report['model']).name}, {report['device']}, {report['dtype']}, track {report['track']}. "
             f"Text: {t['path']} ({t['tokens']} tokens, sha256 {t['sha256'][:12]}), windows of "
             f"{report['window']} tokens every {report['stride']}. Greedy agreement: {report['new_tokens']} tokens "
             f"on each of {report['prompts']} benchmark prompts, the share of the first row's tokens reproduced "
             "before the first difference.", "",
             "| mode | perplexity | vs first row | bits/token | greedy agreement | identical prompts | 1% target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        target = {True: "met", False: "**missed**", None: "–"}[r["meets_target"]]
        ga, same = "–", "–"
        if r["greedy_agreement"] is not None:
            ga, same = f"{100 * r['greedy_agreement']:.1f}%", f"{r['identical']}/{report['prompts']}"
        lines.append(f"| {r['mode']} | {r['ppl']:.4f} | {100 * r['ppl_vs_base']:+.2f}% | {r['bits_per_token']:.4f} | "
                     f"{ga} | {same} | {target} |")
    for c in report["coming"]:
        lines.append(f"| {c['mode']} | coming on day {c['day']} ({c['what']}) | | | | | |")
    cal = report.get("calibration")
    if cal:
        lines += ["", f"Smoothing (alpha {cal['alpha']:g}) was calibrated on the text's last {cal['tokens']} tokens "
                  f"({cal['first']}..{cal['text_tokens'] - 1}); every row scores tokens {cal['scored'][0]}.."
                  f"{cal['scored'][1] - 1} only."]
    if not report["on_gpu"]:
        lines += ["", "On the CPU every mode runs the reference (dequantize, then matmul; the int8 KV rows "
                  "quantized, then dequantized): the numbers a GPU run should reproduce closely."]
    lines += ["", "Engines: " + "; ".join(f"{r['mode']}: {r['engine']}" for r in report["rows"])]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Perplexity against the first row's (%) and greedy agreement, one bar per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["rows"]
    names = [r["mode"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(names, [100 * r["ppl_vs_base"] for r in rows], color="C0")
    a.axhline(100 * TARGET, color="r", ls="--", lw=0.8, label="+1% (w8a16, kv-int8 target)")
    a.axhline(0, color="gray", lw=0.6)
    a.set_ylabel(f"perplexity vs {names[0]} (%)"), a.legend(fontsize=8)
    b.bar(names, [100 * (r["greedy_agreement"] or 0) for r in rows], color="C2")
    b.set_ylabel("greedy agreement (%)"), b.set_ylim(0, 105)
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    fig.suptitle(f"{Path(report['model']).name}, {report['device']}: {report['text']['tokens']} tokens, "
                 f"window {report['window']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict, out) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "perplexity.json", out / "perplexity.md", out / "perplexity.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="smollm2 (default), tiny, llama-1b or an HF Llama folder")
    p.add_argument("--track", default=None, choices=["days", "solutions"], help="whose code runs (default: days)")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--modes", default=None, metavar="LIST", help="comma-separated modes to compare with the "
                   f"unquantized engine: {', '.join(quant_modes.RUNS)}, {KV}, or a weight mode + {KV} (default: "
                   f"{','.join(DEFAULT_MODES)})")
    p.add_argument("--quant", default=None, metavar="MODE", help="shorthand: compare only this weight mode "
                   f"(with {KV} too if --kv-int8 is given)")
    p.add_argument("--kv-int8", action="store_true", help=f"shorthand: compare {KV} (with --quant: the two together)")
    p.add_argument("--quant-group", type=int, default=None, metavar="G", help="the weight modes: a scale per group "
                   "of G columns instead of one per row")
    p.add_argument("--no-quant-head", action="store_true", help="the weight modes: keep the lm_head unquantized")
    quant_modes.add_alpha_argument(p)
    p.add_argument("--calibration-tokens", type=int, default=None, metavar="N", help="w8a8-smooth: the text's last "
                   "N tokens calibrate the smoothing and are scored in no row (default 512)")
    p.add_argument("--window", type=int, default=None, metavar="W", help="tokens per window (default: 1024, "
                   "or the model's context if shorter)")
    p.add_argument("--stride", type=int, default=None, metavar="S", help="a window starts every S tokens "
                   "(default W / 2): each token is scored with at least W - S tokens of context")
    p.add_argument("--text", default=None, metavar="FILE", help="a UTF-8 text to score (default: the shipped "
                   "public-domain text, shared/texts/founding_documents.txt)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score only the text's first N tokens")
    p.add_argument("--new-tokens", type=int, default=None, metavar="N", help="greedy tokens per prompt for the "
                   "agreement (default 32 on a GPU, 12 on the CPU; 0: no agreement)")
    p.add_argument("--prompts-per-family", type=int, default=None, metavar="N", help="the first N prompts of "
                   "each family of shared/spec_prompts.py (default all 8 on a GPU, 2 on the CPU)")
    p.add_argument("--out", default="build/perplexity", help="folder for perplexity.json, perplexity.md and "
                   "perplexity.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def modes_from_args(args) -> str | None:
    if args.modes is not None and (args.quant or args.kv_int8):
        raise ValueError("give the modes either with --modes or with --quant / --kv-int8, not both")
    if args.quant or args.kv_int8:
        return "+".join(([args.quant] if args.quant else []) + ([KV] if args.kv_int8 else []))
    return args.modes


def run_args(args: argparse.Namespace) -> dict:
    report = run(args.model, track=args.track, dtype=args.dtype, modes=modes_from_args(args), window=args.window,
                 stride=args.stride, text=args.text, max_tokens=args.max_tokens, new_tokens=args.new_tokens,
                 per_family=args.prompts_per_family, quant_group=args.quant_group,
                 quant_head=not args.no_quant_head, smooth_alpha=args.smooth_alpha,
                 calibration_tokens=args.calibration_tokens, progress=not args.no_progress)
    paths = write(report, args.out)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return report
