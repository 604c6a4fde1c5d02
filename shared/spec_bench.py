"""`tinyinfer bench --speculative`: plain greedy decoding vs each speculative method, per prompt family.

Speculative decoding pays where the answer repeats the prompt (summarise, extract, edit: the n-gram
drafter finds what comes next in the context) and little on open-ended text. One engine runs every
prompt of shared/spec_prompts.py plainly, then with each method, greedy, in the same run: decode
tok/s, its ratio to plain, tokens per target step, draft acceptance, and how many tokens equal plain
greedy's (fp32: all of them; fp16 may differ where a verify's several rows round otherwise). Tokens
per step do not depend on the hardware; tok/s ratios mean something only on a GPU. Day 39 reads it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from shared import spec_prompts
from shared.engine.speculative import METHODS, check_draft, check_options

SELF_DRAFT_LAYERS = 4        # --draft-layers default: the target's first 4 layers (+ its norm and head)


def check(methods, k, draft_layers, new_tokens, reps, per_family) -> None:
    """One line for options the benchmark cannot run, before any model loads."""
    for m in methods:
        check_options(m, k)
    if not methods:
        raise ValueError(f"--speculative needs at least one method: {','.join(METHODS)}")
    if "draft" in methods:
        check_draft("draft", SELF_DRAFT_LAYERS if draft_layers is None else draft_layers)
    for name, v, low in (("--new-tokens", new_tokens, 2), ("--reps", reps, 1), ("--prompts-per-family", per_family, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def _leading_equal(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _timed(engine, ids, new_tokens: int, reps: int):
    """Tokens and the best decode tok/s of `reps` runs, on a GPU after one untimed run (graphs captured)."""
    if engine.on_gpu:
        list(engine.generate_ids(ids, max_new_tokens=new_tokens, ignore_eos=True))
    best, out = 0.0, []
    for _ in range(reps):
        out = list(engine.generate_ids(ids, max_new_tokens=new_tokens, ignore_eos=True))
        best = max(best, engine.stats.decode_tok_s)
    return out, best


def run(model=None, *, track=None, dtype=None, methods=METHODS, k=4, draft_layers=None,
        new_tokens=None, reps=None, per_family=None, progress=print) -> dict:
    """Every prompt plain and with each method; returns the report (see markdown()). draft_layers
    None: SELF_DRAFT_LAYERS, or fewer on a shallower model; a depth given is the engine's to refuse."""
    from shared.engine import Engine
    from shared.runtime import gpu
    methods = tuple(methods)
    check(methods, k, draft_layers, new_tokens, reps, per_family)
    # built for the first method, so the engine's own checks run (a finished day 35, day 38 for K=auto)
    engine = Engine(model, track=track, dtype=dtype, speculative=methods[0], spec_k=k,
                    draft_layers=(draft_layers or SELF_DRAFT_LAYERS) if methods[0] == "draft" else None)
    if engine.config.num_layers < 2 and "draft" in methods:
        raise ValueError("the model has one layer: a self-draft needs a target with more layers than the draft")
    if draft_layers is None:
        draft_layers = min(SELF_DRAFT_LAYERS, engine.config.num_layers - 1)
    new_tokens = new_tokens or (128 if engine.on_gpu else 24)
    reps = reps or (3 if engine.on_gpu else 1)
    if new_tokens >= engine.max_seq:
        raise ValueError(f"--new-tokens {new_tokens} does not fit the model's context of {engine.max_seq} tokens")
    report = {"model": str(engine.model_dir), "engine": engine.describe(), "on_gpu": engine.on_gpu,
              "device": gpu.gpu_name() if engine.on_gpu else "CPU", "layers": engine.config.num_layers,
              "dtype": str(engine.dtype).replace("torch.", ""), "new_tokens": new_tokens, "k": k, "reps": reps,
              "draft_layers": draft_layers if "draft" in methods else None, "methods": list(methods), "rows": []}
    for family, prompts in spec_prompts.FAMILIES.items():
        for name, prompt in list(prompts.items())[:per_family]:
            ids = engine.prompt_ids(prompt, chat=True)
            row = {"family": family, "prompt": name, "prompt_tokens": len(ids)}
            if len(ids) + new_tokens > engine.max_seq:     # a short-context model (the tiny one): its end
                ids = ids[len(ids) + new_tokens - engine.max_seq:]
                row["prompt_tokens"], row["truncated_from"] = len(ids), row["prompt_tokens"]
            engine.speculative = None
            plain, plain_tok_s = _timed(engine, ids, new_tokens, reps)
            row["plain_tok_s"] = plain_tok_s
            for m in methods:
                engine.speculative, engine.spec_k = m, k
                engine.draft_layers = draft_layers if m == "draft" else None
                out, tok_s = _timed(engine, ids, new_tokens, reps)
                s = engine.stats.spec
                row[m] = {"tok_s": tok_s, "vs_plain": tok_s / plain_tok_s if plain_tok_s else None,
                          "tokens_per_step": s.tokens_per_step(engine.stats.new_tokens),
                          "acceptance": s.acceptance, "equal_tokens": _leading_equal(out, plain),
                          "tokens": len(out),
                          "run": {"rounds": s.steps, "drafted": s.drafted,         # day 39's Run
                                  "seconds": (len(out) - 1) / tok_s if tok_s else 0.0,
                                  "step_seconds": 1 / plain_tok_s if plain_tok_s else 0.0}}
            engine.speculative, engine.draft_layers = None, None
            report["rows"].append(row)
            progress(f"{family:8s} {name:18s} plain {plain_tok_s:7.1f} tok/s  " + "  ".join(
                f"{m} {row[m]['tokens_per_step']:.2f}/step {row[m]['vs_plain'] or 0:.2f}x" for m in methods))
    report["families"] = summary(report)
    report["round_cost"] = {m: round_cost(engine.ops, report["rows"], m) for m in methods}
    return report


def round_cost(ops, rows: list[dict], method: str) -> dict | None:
    """Day 39: the track's fit of a round's cost over this method's runs (steps per round = overhead +
    per_draft * drafts per round), and each run's speedup predicted from it; None when the runs
    cannot give a line (every run drafted as many per round: a draft model at fixed K)."""
    from shared.reference.round_cost import Run
    runs = [Run(**r[method]["run"]) for r in rows]
    try:
        fit = ops.fit_round_cost(runs)
    except ValueError:
        return None
    for r, run in zip(rows, runs):
        r[method]["predicted_vs_plain"] = r[method]["tokens_per_step"] / fit.steps(ops.drafts_per_round(run))
    return {"overhead": fit.overhead, "per_draft": fit.per_draft, "runs": len(runs)}


def summary(report: dict) -> dict:
    """Per family and method: the geometric mean of the speedups, the mean tokens per step, and
    whether every prompt's tokens equal plain greedy's."""
    out = {}
    for family in spec_prompts.FAMILIES:
        rows = [r for r in report["rows"] if r["family"] == family]
        if not rows:
            continue
        out[family] = {}
        for m in report["methods"]:
            ratios = [r[m]["vs_plain"] for r in rows if r[m]["vs_plain"]]
            out[family][m] = {
                "speedup_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
                "tokens_per_step_mean": sum(r[m]["tokens_per_step"] for r in rows) / len(rows),
                "all_equal_to_plain": all(r[m]["equal_tokens"] == r[m]["tokens"] for r in rows)}
    return out


def markdown(report: dict) -> str:
    methods = report["methods"]
    lines = [f"# Speculative decoding: {report['engine']}", "",
             f"{report['device']}, {report['dtype']}, {report['new_tokens']} new tokens per prompt, K = {report['k']}"
             + (f", self-draft: the first {report['draft_layers']} of {report['layers']} layers" if report["draft_layers"] else "")
             + f", best of {report['reps']}" + (" after a warm-up" if report["on_gpu"] else "")
             + "; plain and speculative in the same run.", ""]
    cut = [r["prompt"] for r in report["rows"] if "truncated_from" in r]
    if cut:
        lines += [f"Prompts cut to their last tokens to fit the model's context: {', '.join(cut)}.", ""]
    if not report["on_gpu"]:
        lines += ["Timed on the CPU: the tok/s ratios say little about a GPU. Tokens per step do not depend on "
                  "the hardware.", ""]
    lines += ["| family | method | speedup (geomean) | tokens per step | tokens = plain greedy |", "|---|---|---:|---:|---|"]
    for family, by in report["families"].items():
        for m in methods:
            s = by[m]
            sp = f"{s['speedup_geomean']:.2f}×" if s["speedup_geomean"] else "–"
            lines.append(f"| {family} | {m} | {sp} | {s['tokens_per_step_mean']:.2f} | "
                         f"{'yes' if s['all_equal_to_plain'] else 'no'} |")
    lines.append("")
    for m, fit in report.get("round_cost", {}).items():
        lines.append(f"Round cost, {m} (day 39: a line over its {fit['runs']} runs): {fit['overhead']:.3f} plain steps "
                     f"+ {fit['per_draft']:.3f} per draft; 'predicted' below is tokens per step over that line."
                     if fit else f"Round cost, {m}: no line (every run drafted as many per round; time a second K).")
    lines += ["", "| family | prompt | prompt tokens | plain tok/s | "
              + " | ".join(f"{m} tok/s | {m} × | {m} predicted × | {m} tokens/step | {m} acceptance | {m} = plain"
                           for m in methods) + " |",
              "|---|---|---:|---:|" + "---:|---:|---:|---:|---:|---:|" * len(methods)]
    for r in report["rows"]:
        cells = [r["family"], r["prompt"], str(r["prompt_tokens"]), f"{r['plain_tok_s']:.1f}"]
        for m in methods:
            c = r[m]
            cells += [f"{c['tok_s']:.1f}", f"{c['vs_plain']:.2f}" if c["vs_plain"] else "–",
                      f"{c['predicted_vs_plain']:.2f}" if "predicted_vs_plain" in c else "–",
                      f"{c['tokens_per_step']:.2f}", f"{100 * c['acceptance']:.0f}%", f"{c['equal_tokens']}/{c['tokens']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Tokens per target step by prompt and method: grounded prompts left, open-ended right."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, methods = report["rows"], report["methods"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 3.6))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        ax.bar([i + j * width for i in range(len(rows))], [r[m]["tokens_per_step"] for r in rows], width, label=m)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['prompt']}\n({r['family']})" for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("tokens per target step")
    ax.set_title(f"speculative decoding, K = {report['k']}: 1.0 is plain decoding")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "spec_bench.json", out / "spec_bench.md", out / "spec_tokens_per_step.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths
