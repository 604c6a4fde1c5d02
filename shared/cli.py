"""`tinyinfer`: the course's command line (status, next, check, hint, reset, diff, render,
model, generate, serve, loadtest, bench, doctor). User mistakes get one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import difflib
import os
import struct
import subprocess
import sys
from pathlib import Path

from shared import REPO
from shared.course import progress, registry, syllabus
from shared.runtime import threads


DEFAULT_BLOCK_SIZE = 16     # tokens per KV block of the paged cache (day 31) unless --block-size says

# The oldest GPU the course supports, and the days whose given kernels need more (PTX they emit).
MIN_CC = (7, 5)             # Turing: T4, RTX 20xx (what the compile check of every kernel targets)
DAY_MIN_CC = {26: ((8, 0), "tensor cores: mma.sync.m16n8k16 with fp16 inputs")}


def days_beyond(cc: tuple[int, int]) -> list[str]:
    """One line per thing a GPU of compute capability `cc` cannot run (empty: the whole course)."""
    if cc < MIN_CC:
        return [f"the course needs sm_{MIN_CC[0]}{MIN_CC[1]} or newer; this GPU is sm_{cc[0]}{cc[1]}"]
    return [f"day {n:02d} needs sm_{need[0]}{need[1]} ({what})" for n, (need, what) in sorted(DAY_MIN_CC.items())
            if cc < need]


class UsageError(Exception):
    """Printed as one line; exit code 2."""


def _day(text) -> syllabus.Day:
    try:
        return syllabus.parse_day(text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _published(d: syllabus.Day) -> syllabus.Day:
    if not d.published:
        raise UsageError(f"day {d.number:02d} ({d.title}) is coming soon: not published yet")
    return d


# ---- status / next / hint / reset -------------------------------------------------------------
def cmd_status(args) -> int:
    track = args.track or registry.default_track()
    done, stale = progress.load(), progress.stale_days()
    phases = syllabus.phases()
    print(f"tinyinfer -- 60 days, {len(syllabus.published())} published; track: {track}\n")
    current = None
    for d in syllabus.days():
        if d.phase != current:
            current = d.phase
            print(f"Phase {d.phase}: {phases[d.phase]}")
        rec = done.get(d.tag)
        if not d.published:
            mark = "coming"
        elif track == "solutions":
            mark = "solution"
        elif rec and d.number in stale:
            mark = "changed"
        elif rec:
            mark = "done (" + "+".join(rec.get("tiers", [rec.get("tier", "?")])) + ")"
        else:
            mark = "todo"
        provides = ", ".join(d.provides) or "-"
        print(f"  {d.number:02d}  {d.title[:58]:<58} {mark:<14} {provides}")
    if track == "days" and stale:
        print()
        for n in sorted(stale):
            print(f"day {n:02d}: days/day_{n:02d} changed since it passed: run pytest checkers/day_{n:02d} "
                  "(until it passes again the engine uses the reference for it)")
    from shared.engine.capabilities import capabilities, engine_components
    caps = capabilities(track)
    used = engine_components(caps)
    print("\nEngine components (the engine takes each from the latest finished day, else the reference):")
    for name in registry.all_names():
        src = registry.source(name, track)
        if src.day is not None or name in _reference_names():
            role = "used by the engine" if name in used else "building block"
            print(f"  {name:<24} {src.describe(track):<22} {role}")
    print("\nWhat the engine does now: " + caps.describe() + ".")
    if caps.reference_only:
        print("No GPU here: `tinyinfer generate` runs the PyTorch reference on the CPU; "
              "`--simulate --model tiny` runs your kernels in the simulator.")
    from shared.engine.quant import status_lines
    print("\nQuantized modes (tinyinfer generate|bench --quant MODE, --kv-int8), on this track:")
    for line in status_lines(track):
        print(line)
    for line in progress.problems():  # last, where the learner sees it
        print(f"\nwarning: {line}")
    return 0


def _reference_names() -> set[str]:
    from shared import reference
    return set(reference.__all__)


def cmd_next(args) -> int:
    done = registry.finished("days")
    for d in syllabus.published():
        if d.number not in done:
            files = sorted(p.relative_to(REPO).as_posix() for p in d.path("days").glob("*.py") if p.name != "__init__.py")
            print(f"Next: day {d.number:02d} -- {d.title}\n  lesson: {d.lesson}\n  edit:   {', '.join(files)}\n"
                  f"  check:  pytest checkers/{d.tag}   (or: tinyinfer check {d.number})\n"
                  f"  stuck?  tinyinfer hint {d.number}")
            return 0
    coming = next((d for d in syllabus.days() if not d.published), None)
    print("All published days are done." + (f" Day {coming.number:02d} ({coming.title}) is coming." if coming else ""))
    return 0


def cmd_hint(args) -> int:
    d = _published(_day(args.day))
    if not d.hints:
        print(f"day {d.number:02d} has no hints: read {d.lesson}")
        return 0
    shown = d.hints if args.all else d.hints[: max(1, args.n)]
    for i, h in enumerate(shown, 1):
        print(f"hint {i}/{len(d.hints)}: {h}")
    if len(shown) < len(d.hints):
        print(f"(more: tinyinfer hint {d.number} -n {len(shown) + 1}, or --all)")
    return 0


def cmd_reset(args) -> int:
    d = _day(args.day)
    try:
        forgot = progress.forget(d.number)  # the record holds the files' hash, so a stale mark goes too
    except OSError as e:
        print(f"day {d.number:02d}: cannot update {progress.path()}: {e}")
        return 1
    print(f"day {d.number:02d}: " + ("progress forgotten; the engine uses the reference again until it passes"
                                      if forgot else "nothing recorded"))
    for line in progress.problems():
        print(f"warning: {line}")
    return 0


def cmd_check(args) -> int:
    d = _published(_day(args.day))
    cmd = [sys.executable, "-m", "pytest", f"checkers/{d.tag}", "--track", args.track or registry.default_track(),
           *args.pytest_args]
    return subprocess.call(cmd, cwd=REPO)


# ---- diff / render ------------------------------------------------------------------------------
def _files(folder: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text().splitlines(keepends=True) for p in sorted(folder.glob("*.py"))}


def cmd_diff(args) -> int:
    d = _published(_day(args.day))
    if args.from_day:
        m = _published(_day(args.from_day))
        left, right = m.path("solutions"), d.path("solutions")
    else:
        left, right = d.path("days"), d.path("solutions")
    a, b = _files(left), _files(right)
    out = []
    for name in sorted(set(a) | set(b)):
        out += difflib.unified_diff(a.get(name, []), b.get(name, []),
                                    f"{left.relative_to(REPO)}/{name}", f"{right.relative_to(REPO)}/{name}")
    sys.stdout.writelines(out)
    return 0


def cmd_render(args) -> int:
    from shared.course import lessons
    out = Path(args.out)
    if args.index:
        if args.day or args.no_execute:
            raise UsageError("--index rebuilds the site from what was rendered before: give no day and no --no-execute")
        print(lessons.write_index(out))
        return 0
    days = [_published(_day(args.day))] if args.day else syllabus.published()
    for d in days:
        print(f"rendering day {d.number:02d} ...", file=sys.stderr)
        paths = lessons.render(d, out, execute=not args.no_execute)
        print("  " + "  ".join(str(p) for p in paths))
    print(lessons.write_index(out))
    return 0


# ---- models / generate / bench / doctor ------------------------------------------------------
def cmd_model(args) -> int:
    from shared import models
    if args.action == "prepare":
        path = models.prepare_smollm2(from_gguf=args.from_gguf, force=args.force)
        print(f"SmolLM2-135M-Instruct ready: {path}")
        return 0
    if args.from_gguf is not None or args.force:
        raise UsageError("--from-gguf and --force go with `tinyinfer model prepare`")
    print(f"model cache: {models.home()}")
    for name, path, ready in models.available():
        print(f"  {name:<8} {'ready' if ready else 'not prepared':<13} {path}")
    print("  (any HF-format Llama folder works too: --model PATH)")
    return 0


def _check_prompt(prompt: str) -> None:
    """A prompt that is not valid UTF-8 reaches Python as lone surrogates (argv is decoded with
    surrogateescape): name the first bad byte and where it is, before any model loads."""
    for i, ch in enumerate(prompt):
        if "\ud800" <= ch <= "\udfff":
            at = len(prompt[:i].encode("utf-8", "surrogateescape"))
            what = f"byte 0x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else f"U+{ord(ch):04X} (a lone surrogate)"
            raise UsageError(f"the prompt is not valid UTF-8: {what} at position {at}; convert it first, "
                             "e.g. iconv -f latin1 -t utf-8")


def _check_blocks(args) -> None:
    for flag, value in (("--block-size", args.block_size), ("--num-blocks", args.num_blocks)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")


def _ignored_block_flags(engine, args) -> str | None:
    """The line that says --block-size / --num-blocks do nothing in this run, or None."""
    given = [f for f, v in (("--block-size", args.block_size), ("--num-blocks", args.num_blocks)) if v is not None]
    if not given or (engine.use_cache and engine.use_paged):
        return None
    why = ("there is no KV cache (prefix recompute)" if not engine.use_cache else
           "--no-paged asks for the static KV cache" if args.no_paged else
           f"the {engine.track} track has no paged KV cache before day 31")
    return f"note: {' and '.join(given)} ignored: {why}"


def _check_speculative(args) -> int | str:
    """--speculative / --spec-k / --draft-layers / --draft-model: one line before any model loads
    (a depth past the model's own is caught once it has loaded); the K to use (a number or "auto")."""
    from shared.engine.speculative import DEFAULT_K, check_draft, check_options, parse_k
    if args.speculative != "draft" and (args.draft_layers is not None or args.draft_model is not None):
        raise UsageError("--draft-layers and --draft-model need --speculative draft")
    if args.speculative is None:
        if args.spec_k is not None:
            raise UsageError("--spec-k needs --speculative ngram or --speculative draft")
        return DEFAULT_K
    k = DEFAULT_K if args.spec_k is None else parse_k(args.spec_k)
    check_options(args.speculative, k)
    check_draft(args.speculative, args.draft_layers, args.draft_model)
    if args.temperature > 0:
        raise UsageError(f"--speculative {args.speculative} decodes greedily: drop --temperature "
                         "(speculative sampling is day 37)")
    if args.no_cache:
        raise UsageError("--speculative needs the KV cache: drop --no-cache")
    return k


def check_quant(args):
    """--quant and its companions, checked before any model loads: the options, or None."""
    from shared.engine.quant import check_kv_int8, check_options
    try:
        check_kv_int8(args.kv_int8, use_cache=False if getattr(args, "no_cache", False) else None,
                      paged=False if getattr(args, "no_paged", False) else None,
                      speculative=getattr(args, "speculative", None))
        return check_options(args.quant, args.quant_group, not args.no_quant_head, args.kv_int8, args.smooth_alpha)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _progress(ids, prompt_tokens: int, max_new: int, per_token: bool):
    """Token ids, passed through, with progress on stderr: the simulator takes minutes per token."""
    import time
    t0 = time.perf_counter()
    print(f"[simulator: prefill of {prompt_tokens} prompt tokens, then up to {max_new} new ones; every "
          "token takes a while here (minutes on a small CPU)]", file=sys.stderr, flush=True)
    for n, tok in enumerate(ids, 1):
        if per_token:
            print(f"[token {n}/{max_new} after {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
        yield tok


def cmd_generate(args) -> int:
    if args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    _check_prompt(args.prompt)
    _check_blocks(args)
    threads.configure()
    from shared.engine import Engine
    if args.simulate:
        os.environ.setdefault("TINYINFER_TIER", "sim")
    from shared.engine import SamplingParams   # bad sampling flags: one line before any model loads
    SamplingParams(args.temperature, args.top_k, args.top_p, args.max_new_tokens, seed=args.seed)
    spec_k = _check_speculative(args)
    check_quant(args)
    engine = Engine(args.model, track=args.track, dtype=args.dtype, use_cache=False if args.no_cache else None,
                    simulate=args.simulate, graphs=False if args.no_graph else None,
                    paged=False if args.no_paged else None,
                    block_size=args.block_size if args.block_size is not None else DEFAULT_BLOCK_SIZE,
                    num_blocks=args.num_blocks, speculative=args.speculative, spec_k=spec_k,
                    draft_layers=args.draft_layers, draft_model=args.draft_model, quant=args.quant,
                    quant_group=args.quant_group, quant_head=not args.no_quant_head, kv_int8=args.kv_int8,
                    smooth_alpha=args.smooth_alpha)
    print(f"[{engine.describe()}]", file=sys.stderr)
    from shared import models
    if Path(engine.model_dir).resolve() == (models.home() / models.TINY_DIR).resolve():
        print("[--model tiny: a seeded random Llama, its weights are random: expect gibberish, "
              "not language (for tests and the simulator)]", file=sys.stderr)
    note = _ignored_block_flags(engine, args)
    if note:
        print(note, file=sys.stderr)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed)
    prompt_ids = engine.prompt_ids(args.prompt, chat=args.chat)
    ids = engine.generate_ids(prompt_ids, **kw)
    if args.simulate:     # when streaming, the text itself shows each token
        ids = _progress(ids, len(prompt_ids), args.max_new_tokens, per_token=not args.stream)
    pieces = (event.text for event in engine.ops.stream(ids, engine.tokenizer))
    if args.stream:
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    else:
        print("".join(pieces))
    s = engine.stats
    rate = s.decode_tok_s
    rate = f"{rate:.1f} tok/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s per token"   # the simulator
    print(f"[{s.prompt_tokens} prompt + {s.new_tokens} new tokens; TTFT {s.ttft_s * 1e3:.0f} ms; "
          f"decode {rate}]", file=sys.stderr)
    if getattr(s, "spec", None) is not None:          # --speculative: tokens per target step, acceptance
        print(f"[{s.spec.describe(s.new_tokens)}]", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    """An OpenAI-compatible server (day 52) over day 51's LLM: every bad flag is one line before
    any model loads; then the model loads once and uvicorn serves until Ctrl-C."""
    for flag, value in (("--max-num-seqs", args.max_num_seqs), ("--max-pending", args.max_pending),
                        ("--max-len", args.max_len)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    if args.api_key is not None and (not args.api_key.strip() or any(c.isspace() for c in args.api_key)):
        raise UsageError("--api-key must be a non-empty token without spaces (clients send it as a bearer token)")
    _check_blocks(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(f"tinyinfer serve needs fastapi and uvicorn ({e.name} is missing): "
                         "pip install fastapi uvicorn")
    threads.configure()
    from shared import models
    ops = registry.Ops(args.track)
    llm = ops.LLM(args.model, track=args.track, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                  max_len=args.max_len, num_blocks=args.num_blocks,
                  block_size=args.block_size if args.block_size is not None else DEFAULT_BLOCK_SIZE,
                  prefix_cache=args.prefix_cache, graphs=False if args.no_graph else None)
    name = args.model or models.DEFAULT_MODEL
    print(f"[{llm.engine.describe()}; {args.max_num_seqs} rows, context {llm.max_len}]", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"note: --host {args.host} serves other machines with no --api-key: anyone who reaches it can use it",
              file=sys.stderr)
    print(f"[serving model '{name}' at http://{args.host}:{args.port}/v1 -- Ctrl-C stops]", file=sys.stderr)
    ops.serve(llm, host=args.host, port=args.port, api_key=args.api_key, model_name=name,
              max_pending=args.max_pending)
    return 0


def cmd_loadtest(args) -> int:
    """Day 53: closed-loop load against a running server; bad flags, an unreachable server or a
    refused key are one line (exit 2) before any load; Ctrl-C writes what was measured (130)."""
    try:
        import httpx  # noqa: F401
        import openai  # noqa: F401
    except ImportError as e:
        raise UsageError(f"tinyinfer loadtest needs the openai client ({e.name} is missing): pip install openai")
    from shared import loadtest
    return loadtest.run_args(args)


def cmd_mutants(args) -> int:
    from shared.course import mutants
    return mutants.main_args(args)


def cmd_bench(args) -> int:
    threads.configure()
    from shared import bench
    bench.run_args(args)
    return 0


def cmd_perplexity(args) -> int:
    threads.configure()
    from shared import quality
    quality.run_args(args)
    return 0


def cmd_doctor(args) -> int:
    import importlib.metadata as md
    from shared import models
    from shared.runtime.tier import detect
    ok = True

    def ver(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None
    print(f"python      {sys.version.split()[0]}")
    for pkg in ("torch", "numba", "numba-cuda", "numpy", "transformers", "tokenizers", "safetensors", "gguf"):
        v = ver(pkg)
        note = ""
        if v is None:
            ok, note = False, "  MISSING: pip install -e ."
        elif pkg == "numpy" and tuple(int(x) for x in v.split(".")[:2]) >= (2, 5):
            ok, note = False, "  numba-cuda 0.30 breaks on numpy >= 2.5: pip install 'numpy<2.5'"
        print(f"{pkg:<11} {v or '-'}{note}")
    import torch
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"gpu         {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor} "
              f"(sm_{p.major}{p.minor}), CUDA {torch.version.cuda}")
        beyond = days_beyond((p.major, p.minor))
        ok = ok and (p.major, p.minor) >= MIN_CC
        for line in beyond or ["every published day runs on it"]:
            print(f"            {line}")
    else:
        print("gpu         none: kernels run in Numba's CUDA simulator (sim tier); generate uses the reference")
        print(f"            (a GPU for the course: compute capability {MIN_CC[0]}.{MIN_CC[1]} or newer; "
              + "; ".join(f"day {n:02d}: {need[0]}.{need[1]}" for n, (need, _) in sorted(DAY_MIN_CC.items())) + ")")
        if torch.version.cuda:
            print(f"            note: torch {torch.__version__} is a CUDA build (GBs of CUDA libraries) on a machine "
                  "without a GPU; the CPU build is far smaller: pip install torch --index-url "
                  "https://download.pytorch.org/whl/cpu")
    try:
        print(f"tier        {detect()}")
    except ValueError as e:
        ok = False
        print(f"tier        PROBLEM: {e}")
    n, why = threads.choose()
    print(f"cpu threads {n} ({why})")
    for name, path, ready in models.available():
        problem = _model_problem(path) if ready else None
        ok = ok and problem is None
        state = "not prepared" if not ready else f"BROKEN: {problem}" if problem else "ready, files checked"
        print(f"model       {name}: {state} ({path})")
        if problem:
            print("            " + ("rebuild it: tinyinfer model prepare --force" if name == "smollm2" else
                                   f"remove the folder; --model {name} makes it again"))
    print("all good" if ok else "problems found (see above)")
    return 0 if ok else 1


def _model_problem(path: Path) -> str | None:
    """What is wrong with a prepared model's files (headers, sizes, config, tokenizer), or None."""
    from shared.models import ModelError
    from shared.reference import Tokenizer
    from shared.reference.loading import check_model
    try:
        config, _ = check_model(path)
        vocab = Tokenizer(path).vocab_size
    except (ModelError, ValueError, OSError) as e:
        return str(e)
    if vocab > config.vocab_size:
        return f"the tokenizer has {vocab} tokens, config.json's vocab_size is {config.vocab_size}"
    return None


# ---- parser -----------------------------------------------------------------------------------
def _command(sub, name: str, help: str, description: str | None = None):
    """A subcommand whose --help starts with what it does (the same words as the list of commands)."""
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyinfer", description="Build an LLM inference engine in 60 days.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    track = dict(choices=registry.TRACKS, default=None, help="days (your code, default) or solutions")
    day = dict(help="a day: 3, 03 or day_03")

    s = _command(sub, "status", "the 60 days, your progress, where each engine component comes from")
    s.add_argument("--track", **track)
    s.set_defaults(fn=cmd_status)
    _command(sub, "next", "what to do next: the day, its files, its lesson").set_defaults(fn=cmd_next)
    s = _command(sub, "check", "run a day's checker (pytest)")
    s.add_argument("day", **day)
    s.add_argument("--track", **track)
    s.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest (e.g. -x -k name)")
    s.set_defaults(fn=cmd_check)
    s = _command(sub, "hint", "hints for a day, one at a time")
    s.add_argument("day", **day)
    s.add_argument("-n", type=int, default=1, help="how many hints (default 1)")
    s.add_argument("--all", action="store_true", help="every hint of the day")
    s.set_defaults(fn=cmd_hint)
    s = _command(sub, "reset", "forget a day's recorded progress")
    s.add_argument("day", **day)
    s.set_defaults(fn=cmd_reset)
    s = _command(sub, "diff", "stub vs solution of a day (or --from MM: solution MM vs NN)")
    s.add_argument("day", **day)
    s.add_argument("--from", dest="from_day", metavar="MM", help="compare day MM's solution with this day's")
    s.set_defaults(fn=cmd_diff)
    s = _command(sub, "render", "execute lessons and build the offline course site in build/lessons",
                 "Execute lessons and build the offline course site: build/lessons/index.html (by phase, with "
                 "your progress) and one page per lesson with previous/next links. Math is rendered when "
                 "the page is built; nothing is fetched from the network.")
    s.add_argument("day", nargs="?", help="one day (default: every published day; executing all takes a while)")
    s.add_argument("--out", default=str(REPO / "build" / "lessons"), help="the site's folder (default build/lessons)")
    s.add_argument("--no-execute", action="store_true", help="build the pages without running the lessons' code")
    s.add_argument("--index", action="store_true", help="only rebuild the index, the pages' links and the "
                   "progress marks from what was rendered before (seconds)")
    s.set_defaults(fn=cmd_render)
    s = _command(sub, "model", "prepare or list models")
    s.add_argument("action", choices=["prepare", "list"], help="prepare: download and convert SmolLM2; list: "
                   "what the model cache holds")
    s.add_argument("--from-gguf", help="offline: SmolLM2-135M-Instruct.Q4_1.gguf you copied here")
    s.add_argument("--force", action="store_true", help="prepare again even if the model is ready")
    s.set_defaults(fn=cmd_model)
    s = _command(sub, "generate", "generate text with the engine (your finished days, else the reference)")
    s.add_argument("prompt", help="the text to continue (UTF-8)")
    s.add_argument("--model", default=None, help="smollm2 (default), tiny (random weights, for tests), "
                   "or an HF Llama folder")
    s.add_argument("--track", **track)
    s.add_argument("--max-new-tokens", type=int, default=64, help="stop after this many new tokens (default 64)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens only (0 = all)")
    s.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of tokens with this "
                   "much probability (1.0 = all)")
    s.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same text)")
    s.add_argument("--dtype", choices=["fp16", "fp32"], default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    s.add_argument("--stream", action="store_true", help="print text as it is generated")
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    s.add_argument("--no-cache", action="store_true", help="recompute the prefix every step")
    s.add_argument("--no-graph", action="store_true", help="launch every kernel from Python (no CUDA graphs)")
    s.add_argument("--no-paged", action="store_true", help="a static KV cache instead of the paged one (day 31)")
    s.add_argument("--block-size", type=int, default=None, help=f"tokens per KV block of the paged cache "
                   f"(default {DEFAULT_BLOCK_SIZE}; the paged cache comes with day 31)")
    s.add_argument("--num-blocks", type=int, default=None, help="KV blocks in the paged pool (default: sized "
                   "from the request, like the static cache)")
    s.add_argument("--speculative", choices=["ngram", "draft"], default=None, help="speculative decoding (day 35): "
                   "ngram = draft from the context (prompt lookup), draft = a draft model (day 36: --draft-layers or "
                   "--draft-model); verify K drafts per target step; greedy, same text")
    s.add_argument("--draft-layers", type=int, default=None, help="--speculative draft: the target's first L layers "
                   "(+ its final norm and head) draft, sharing its weights; with --draft-model, that model's first L")
    s.add_argument("--draft-model", default=None, help="--speculative draft: a smaller HF Llama folder with the "
                   "target's tokenizer drafts (all its layers unless --draft-layers)")
    s.add_argument("--spec-k", default=None, metavar="K|auto", help="tokens drafted per target step with "
                   "--speculative (default 4, at most 16), or auto: K chosen each step from the running acceptance "
                   "(day 38)")
    from shared.engine.quant import add_arguments as add_quant_arguments
    add_quant_arguments(s)
    s.add_argument("--simulate", action="store_true", help="run the track's kernels in the simulator (tiny model; "
                   "minutes per token)")
    s.set_defaults(fn=cmd_generate)
    s = _command(sub, "serve", "serve the engine over HTTP, OpenAI-compatible (day 52: /v1/completions, "
                 "/v1/chat/completions, /v1/models, SSE streaming)")
    s.add_argument("--model", default=None, help="smollm2 (default), tiny (random weights, for tests), "
                   "or an HF Llama folder; clients name it in 'model'")
    s.add_argument("--track", **track)
    s.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 serves others, give --api-key then)")
    s.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request "
                   "(401 without it)")
    s.add_argument("--max-num-seqs", type=int, default=16, help="the most requests one step decodes "
                   "(default 16); more are queued")
    s.add_argument("--max-pending", type=int, default=None, help="the most unfinished requests; one more gets "
                   "a 503 (default 8 x --max-num-seqs)")
    s.add_argument("--max-len", type=int, default=None, help="the longest sequence, prompt + max_tokens "
                   "(default: the model's context)")
    s.add_argument("--dtype", choices=["fp16", "fp32"], default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    s.add_argument("--no-graph", action="store_true", help="launch every kernel from Python (no CUDA graphs)")
    s.add_argument("--block-size", type=int, default=None, help=f"tokens per KV block of the paged pool "
                   f"(default {DEFAULT_BLOCK_SIZE})")
    s.add_argument("--num-blocks", type=int, default=None, help="KV blocks in the pool (default: room for "
                   "--max-num-seqs sequences)")
    s.add_argument("--prefix-cache", action="store_true", help="share cached prompt blocks between requests "
                   "(day 50)")
    s.set_defaults(fn=cmd_serve)
    s = _command(sub, "loadtest", "load-test a server: throughput, TTFT and inter-token latency against "
                 "concurrency (day 53)", "Load-test an OpenAI-compatible server (tinyinfer serve, day 52) in a closed "
                 "loop: at each concurrency C, C clients stream requests back to back. Reports ok / failed / lost / "
                 "duplicated requests, output tok/s, req/s, TTFT and inter-token latency p50/p90/p99 and the "
                 "server's KV pool after each level (loadtest.json, loadtest.md, two plots). Ctrl-C writes what was "
                 "measured so far.")
    from shared import loadtest
    loadtest.add_arguments(s)
    s.set_defaults(fn=cmd_loadtest)
    s = _command(sub, "bench", "benchmark the engine against HF transformers (JSON, Markdown, plots)")
    from shared import bench
    bench.add_arguments(s)
    s.set_defaults(fn=cmd_bench)
    s = _command(sub, "perplexity", "quality of the quantized modes: perplexity on a shipped text and greedy "
                 "agreement with the unquantized engine (day 45; JSON, Markdown, a plot)")
    from shared import quality
    quality.add_arguments(s)
    s.set_defaults(fn=cmd_perplexity)
    _command(sub, "doctor", "check the GPU (and which days it can run), driver, numba-cuda and the numpy pin"
             ).set_defaults(fn=cmd_doctor)
    s = _command(sub, "mutants", "run the checkers against the solutions with known mistakes (all must fail)")
    from shared.course import mutants
    mutants.add_arguments(s)
    s.set_defaults(fn=cmd_mutants)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    from jinja2.exceptions import TemplateError
    from shared.engine.errors import OutOfBlocksError
    from shared.models import ModelError
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (UsageError, ModelError, ValueError, LookupError, OSError, RecursionError, OverflowError,
            struct.error, TemplateError, OutOfBlocksError) as e:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg = text.strip().splitlines()[0] if text.strip() else ""
        ours = (UsageError, ModelError, ValueError, LookupError, FileNotFoundError, OutOfBlocksError)
        if not msg or not isinstance(e, ours):
            msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__  # not ours: name the kind
        print(f"tinyinfer: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
