"""The project's own mutants: the mistakes each lesson warns about, made on purpose in a copy of
the solutions. A day's checker must fail on every one of them ("killed"); a mutant that passes
("survived") is a hole in the checker.

Each day lists its mutants in checkers/day_NN/mutants.toml:

    [[mutant]]
    name = "no_bounds_guard"             # unique within the day
    why = "the last block writes past the end of out"
    file = "vector_add.py"               # in solutions/day_NN/ (optional when the day has one module)
    find = "if i < n:"                   # exact text of the solution ...
    replace = "if True:"                 # ... and what the mistake looks like
    # count = 2                          # optional: find occurs exactly this often (default 1), all replaced
    # tier = "gpu"                       # optional: only a GPU-tier test can catch it (skipped in the sim tier)
    # known_gap = "..."                  # optional: the checker cannot catch it yet (whose job, why); such a
    #                                    # mutant must survive, and the run fails once it is killed: remove the line

A mistake in two places lists edits instead of find/replace: `[[mutant.edit]]` tables, each with
find, replace and optionally file and count. A snippet that is not found the expected number of
times, or an edit that does not leave valid Python, is an error: mutants never rot silently.

Run: `tinyinfer mutants [DAY ...]` or `python -m shared.course.mutants [DAY ...]`. Each mutant
patches a temporary copy of solutions/, and the day's checker runs against it with
`--track solutions` in a subprocess (the copy first on the import path). Exit code 1 if any
mutant survived. `--check` only validates the files (fast); `--shard I/N` runs every N-th mutant;
`--gpu-only` runs only the mutants marked `tier = "gpu"` (on a GPU).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from shared import REPO
from shared.course import syllabus

FILENAME = "mutants.toml"


class MutantError(ValueError):
    """A mutants.toml that does not fit the solution it mutates."""


@dataclass(frozen=True)
class Edit:
    file: str
    find: str
    replace: str
    count: int = 1


@dataclass(frozen=True)
class Mutant:
    day: int
    name: str
    why: str
    edits: tuple[Edit, ...]
    tier: str = "any"     # "gpu": only GPU-tier tests can catch it
    known_gap: str = ""   # why the checker cannot catch it yet ("" = it must be killed)

    @property
    def id(self) -> str:
        return f"day_{self.day:02d}:{self.name}"


@dataclass
class Result:
    mutant: Mutant
    outcome: str          # killed | survived | timeout | error | skipped | known gap
    seconds: float
    detail: str = ""      # the test that caught it, or why it could not run
    cpu: float = 0.0      # CPU seconds of the checker run


# ---- reading and applying ---------------------------------------------------------------------
def days_with_mutants() -> list[int]:
    return [d.number for d in syllabus.published() if (d.path("checkers") / FILENAME).exists()]


def load(day: int) -> list[Mutant]:
    """The mutants of one day, checked for form (not yet against the solution)."""
    d = syllabus.day(day)
    path = d.path("checkers") / FILENAME
    if not path.exists():
        raise MutantError(f"{path.relative_to(REPO)}: no mutants for day {day:02d}")
    where = path.relative_to(REPO)
    try:
        raw = tomllib.loads(path.read_text()).get("mutant", [])
    except tomllib.TOMLDecodeError as e:
        raise MutantError(f"{where}: {e}") from None
    modules = sorted(p.name for p in d.path("solutions").glob("*.py") if p.name != "__init__.py")
    out, seen = [], set()
    for i, m in enumerate(raw):
        name = m.get("name") or f"#{i + 1}"
        if name in seen:
            raise MutantError(f"{where}: two mutants are named {name!r}")
        seen.add(name)
        if not m.get("why"):
            raise MutantError(f"{where}: mutant {name!r} needs a `why` (the mistake, in the lesson's words)")
        specs = m.get("edit") or [m]
        edits = []
        for e in specs:
            file = e.get("file") or m.get("file") or (modules[0] if len(modules) == 1 else None)
            if file is None or "find" not in e or "replace" not in e:
                raise MutantError(f"{where}: mutant {name!r} needs find, replace and (with several "
                                  f"modules: {', '.join(modules)}) file")
            if e["find"] == e["replace"]:
                raise MutantError(f"{where}: mutant {name!r} replaces {e['find']!r} with itself")
            edits.append(Edit(file, e["find"], e["replace"], int(e.get("count", 1))))
        tier = m.get("tier", "any")
        if tier not in ("any", "gpu"):
            raise MutantError(f"{where}: mutant {name!r}: tier must be 'any' or 'gpu', got {tier!r}")
        out.append(Mutant(day, name, m["why"], tuple(edits), tier, m.get("known_gap", "")))
    return out


def apply(mutant: Mutant, solutions: Path) -> None:
    """Patch a copy of the solutions package in place; MutantError if a snippet does not fit."""
    sources: dict[str, str] = {}
    for e in mutant.edits:
        path = solutions / f"day_{mutant.day:02d}" / e.file
        if not path.exists():
            raise MutantError(f"{mutant.id}: solutions/day_{mutant.day:02d}/{e.file} does not exist")
        text = sources.get(e.file, path.read_text())
        found = text.count(e.find)
        if found != e.count:
            raise MutantError(f"{mutant.id}: {e.find!r} occurs {found} times in solutions/day_{mutant.day:02d}/"
                              f"{e.file}, expected {e.count}: the solution changed, update the mutant")
        sources[e.file] = text.replace(e.find, e.replace)
    for file, text in sources.items():
        try:
            compile(text, file, "exec")
        except SyntaxError as err:
            raise MutantError(f"{mutant.id}: the mutated {file} is not valid Python "
                              f"({err.msg}, line {err.lineno})") from None
        (solutions / f"day_{mutant.day:02d}" / file).write_text(text)


def check(mutant: Mutant) -> None:
    """Apply the mutant to a scratch copy of its day only: every snippet found, valid Python."""
    with tempfile.TemporaryDirectory(prefix="tinyinfer-mutant-") as tmp:
        src = syllabus.day(mutant.day).path("solutions")
        shutil.copytree(src, Path(tmp) / src.name, ignore=shutil.ignore_patterns("__pycache__"))
        apply(mutant, Path(tmp))


# ---- running ----------------------------------------------------------------------------------
FAILED = re.compile(r"^(?:FAILED|ERROR) \S*::(\S+)", re.M)
ERROR_LINE = re.compile(r"^E +(\S.*)$", re.M)


def run(mutant: Mutant, timeout: float = 600) -> Result:
    """The day's checker against solutions/ with this mutant applied (a subprocess, a temp copy)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tinyinfer-mutant-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(REPO / "solutions", tmp / "solutions", ignore=shutil.ignore_patterns("__pycache__"))
        apply(mutant, tmp / "solutions")
        path = [str(tmp), str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        env = dict(os.environ, TINYINFER_TRACK="solutions", TINYINFER_PROGRESS=str(tmp / "progress.json"),
                   PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1",
                   TINYINFER_COMPILE_CHECK="0")   # a child compiler per mutant costs minutes; the check has its own tests
        cmd = [sys.executable, "-m", "pytest", str(REPO / "checkers" / f"day_{mutant.day:02d}"), "--track", "solutions",
               "-x", "-q", "--no-header", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:benchmark",
               "-p", "no:hypothesispytest", "-m", "not bench",    # speed is not what a mutant breaks
               "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO)]
        # cwd = the copy: `python -m` puts the cwd first on sys.path, so the mutated solutions win
        code, output, cpu = _run_child(cmd, tmp, env, timeout)
    seconds = time.perf_counter() - start
    if code is None:
        return Result(mutant, "timeout", seconds, f"the checker ran past {timeout:.0f} s", cpu)
    if code == 0:
        if mutant.known_gap:
            return Result(mutant, "known gap", seconds, mutant.known_gap, cpu)
        return Result(mutant, "survived", seconds, "every test passed", cpu)
    caught, error = FAILED.search(output), ERROR_LINE.search(output)
    if code == 1 and caught:
        detail = f"{caught.group(1)}: {error.group(1) if error else '?'}"
        if mutant.known_gap:   # the gap is closed: the file must say so
            return Result(mutant, "error", seconds, f"killed now, remove its known_gap line ({detail})", cpu)
        return Result(mutant, "killed", seconds, detail, cpu)
    tail = output.strip().splitlines()[-1:] or ["no output"]
    return Result(mutant, "error", seconds, f"pytest exit code {code}: {tail[0]}", cpu)


def _run_child(cmd, cwd, env, timeout) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, output, CPU seconds) of a subprocess. The CPU time does not
    depend on what else runs on the machine, so it estimates the run on dedicated cores."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        expired = []
        timer = threading.Timer(timeout, lambda: (expired.append(True), proc.kill()))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    return (None if expired else code), output, usage.ru_utime + usage.ru_stime


def select(days: list[int] | None, shard: str | None = None) -> list[Mutant]:
    """Every mutant of these days (all days with mutants if none), optionally one shard 'I/N'."""
    chosen = [m for d in (days or days_with_mutants()) for m in load(d)]
    if shard:
        i, n = _parse_shard(shard)
        chosen = chosen[i::n]
    return chosen


def _parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise MutantError(f"--shard {text!r}: use I/N with 0 <= I < N (e.g. 3/7)")
    return int(m.group(1)), int(m.group(2))


def table(results: list[Result]) -> str:
    rows = [f"{'day':<4} {'mutant':<36} {'result':<9} {'cpu':>5}  caught by"]
    for r in results:
        rows.append(f"{r.mutant.day:02d}   {r.mutant.name:<36} {r.outcome:<9} {r.cpu:4.0f}s  {r.detail[:100]}")
    return "\n".join(rows)


# ---- command line -----------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("days", nargs="*", help="day numbers (default: every day with a mutants.toml)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    p.add_argument("--check", action="store_true", help="only check that every mutant applies (fast)")
    p.add_argument("--list", action="store_true", help="list the mutants and what each one gets wrong")
    p.add_argument("--shard", help="run only mutants I, I+N, I+2N, ... (I/N): a rotating CI subset")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant's checker run")
    p.add_argument("--name", action="append", default=[], help="only the mutants whose name contains this text "
                   "(repeatable): rerun the ones a change touched")
    p.add_argument("--gpu-only", action="store_true", help="only the mutants marked tier = \"gpu\" (the ones the "
                   "sim tier cannot catch: run them on a GPU)")


def main_args(args) -> int:
    days = [syllabus.parse_day(d).number for d in args.days] or None
    mutants = select(days, args.shard)
    if args.gpu_only:
        mutants = [m for m in mutants if m.tier == "gpu"]
    if args.name:
        mutants = [m for m in mutants if any(n in m.name for n in args.name)]
    if args.list:
        for m in mutants:
            note = "  [GPU only]" if m.tier == "gpu" else ""
            note += f"  [known gap: {m.known_gap}]" if m.known_gap else ""
            print(f"{m.id:<40} {m.why}{note}")
        return 0
    for m in mutants:
        check(m)
    if args.check:
        print(f"{len(mutants)} mutants apply cleanly")
        return 0
    from shared.runtime.tier import detect
    tier = detect()
    start = time.perf_counter()
    results = [Result(m, "skipped", 0.0, "only a GPU-tier test can catch it") for m in mutants
               if m.tier == "gpu" and tier != "gpu"]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(lambda m: run(m, args.timeout), [m for m in mutants if m.tier != "gpu" or tier == "gpu"]):
            print(f"  {r.mutant.id:<40} {r.outcome}", file=sys.stderr, flush=True)
            results.append(r)
    results.sort(key=lambda r: (r.mutant.day, mutants.index(r.mutant)))
    print(table(results))
    bad = [r for r in results if r.outcome in ("survived", "error")]
    count = {k: sum(r.outcome == k for r in results) for k in ("killed", "timeout", "skipped", "known gap")}
    print(f"\n{len(results)} mutants ({tier} tier): {count['killed']} killed, {count['timeout']} timed out, "
          f"{count['skipped']} skipped (GPU only), {count['known gap']} known gaps, {len(bad)} survived or failed; "
          f"{time.perf_counter() - start:.0f} s with {args.jobs} jobs, {sum(r.cpu for r in results):.0f} CPU s")
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shared.course.mutants", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    try:
        return main_args(p.parse_args(argv))
    except (MutantError, ValueError) as e:
        print(f"mutants: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
