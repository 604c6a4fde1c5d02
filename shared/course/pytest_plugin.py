"""The tinyinfer pytest plugin (loaded by `-p shared.course.pytest_plugin`): tracks, tiers, fixtures, progress.

--track days|solutions   whose code to check (default: days, or $TINYINFER_TRACK)
Tier: a CUDA GPU -> 'gpu'; none -> 'sim' (NUMBA_ENABLE_CUDASIM=1, set here before numba loads).
Progress (days track): a run of a day's whole checker records the day in .tinyinfer/progress.json
when every test passes, and forgets it when one fails; a partial run (node ids, -k, -m, --lf,
--deselect, some of its files) never changes what is recorded.
"""
from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

from shared.runtime.tier import select

TIER = select()  # must run before anything imports numba

import pytest  # noqa: E402

from shared import REPO  # noqa: E402
from shared.course import progress, registry, syllabus  # noqa: E402

DAY_DIR = re.compile(r"checkers[/\\]day_(\d\d)[/\\]")


def pytest_addoption(parser):
    parser.addoption("--track", choices=registry.TRACKS, default=None,
                     help="whose code to check: 'days' (yours, default) or 'solutions'")


def pytest_configure(config):
    track = config.getoption("--track") or registry.default_track()
    os.environ["TINYINFER_TRACK"] = track
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")   # torch.profiler's library prints "USDT: ..." lines otherwise
    config._tinyinfer = SimpleNamespace(
        track=track, tier=TIER,
        outcomes=defaultdict(dict),   # day -> {nodeid: 'passed'|'skipped'|'failed'} from the reports
        collected=defaultdict(set),   # day -> the nodeids this session collected
        partial=set(),                # days this session runs only part of
        recorded=[], forgotten=[], errors=[],
        todo=defaultdict(set),        # day -> {(file, function)} whose NotImplementedError failed a test
        other_failures=0)             # failed reports that are not a stub's NotImplementedError
    if TIER == "sim":   # the simulator runs kernels a GPU would not compile: compile them too
        from shared.course import compile_check
        compile_check.install()


def pytest_report_header(config):
    t = config._tinyinfer
    return f"tinyinfer: track={t.track} tier={t.tier}" + (
        " (no CUDA GPU: kernels run in Numba's simulator, tiny sizes, gpu tests skipped)" if t.tier == "sim" else "")


def _model_ready() -> bool:
    from shared import models
    return any(ready for name, _, ready in models.available() if name == "smollm2")


def pytest_collection_modifyitems(config, items):
    sim = config._tinyinfer.tier == "sim"
    for item in items:
        if sim and ("gpu" in item.keywords or "bench" in item.keywords):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (sim tier)"))
        if "model" in item.keywords and not _model_ready():
            item.add_marker(pytest.mark.skip(reason="SmolLM2 not prepared: run `tinyinfer model prepare`"))


def _day_of(nodeid: str) -> int | None:
    m = DAY_DIR.search(nodeid.replace("\\", "/") if "checkers" in nodeid else "checkers/" + nodeid)
    return int(m.group(1)) if m else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(NotImplementedError):
        # The learner has not written this yet: one clear line instead of a traceback, and which
        # function raised it (a property survives xdist's trip from worker to controller).
        rep.longrepr = f"NotImplementedError: {call.excinfo.value}"
        entry = call.excinfo.traceback[-1]
        try:
            where = Path(str(entry.path)).resolve().relative_to(REPO).as_posix()
        except ValueError:
            where = str(entry.path)
        name = getattr(entry.frame.code.raw, "co_qualname", entry.name)   # BlockAllocator.__init__
        rep.user_properties.append(("tinyinfer_todo", (where, name)))


def pytest_runtest_logreport(report):
    """One outcome per test: failed if any phase failed, else skipped, else passed."""
    t = _CONFIG._tinyinfer
    if report.failed:
        todo = dict(report.user_properties).get("tinyinfer_todo")
        if todo is None:
            t.other_failures += 1
        else:
            t.todo[_day_of(report.nodeid)].add(tuple(todo))
    day = _day_of(report.nodeid)
    if day is None:
        return
    seen = t.outcomes[day]
    if report.failed or seen.get(report.nodeid) == "failed":
        seen[report.nodeid] = "failed"
    elif report.skipped:
        seen[report.nodeid] = "skipped"
    elif report.when == "call":
        seen[report.nodeid] = "passed"


# ---- which days a session runs in whole ------------------------------------------------------
def pytest_deselected(items):
    """-k, -m, --deselect, --lf and --sw all deselect through this hook."""
    for item in items:
        day = _day_of(item.nodeid)
        if day is not None:
            item.config._tinyinfer.partial.add(day)


def _picks_node_ids(config, folder: Path) -> bool:
    """Whether the command line names single tests (path::name) inside this day's folder."""
    for arg in config.args:
        if "::" in arg:
            target = (config.invocation_params.dir / arg.split("::")[0]).resolve()
            if target == folder or folder in target.parents:
                return True
    return False


def pytest_collection_finish(session):
    """Note what this session collected per day, and which days only in part: a test file of
    checkers/day_NN/ left out (--ignore, one file named, --lf) or single tests picked by node id."""
    config = session.config
    t = config._tinyinfer
    files = defaultdict(set)
    for item in session.items:
        day = _day_of(item.nodeid)
        if day is not None:
            t.collected[day].add(item.nodeid)
            files[day].add(item.path)
    patterns = config.getini("python_files")
    for day, got in files.items():
        folder = next(p for p in next(iter(got)).parents if p.name == f"day_{day:02d}")
        want = {f for f in folder.rglob("*.py") if any(fnmatch.fnmatch(f.name, pat) for pat in patterns)}
        if got != want or _picks_node_ids(config, folder):
            t.partial.add(day)
    if hasattr(config, "workerinput"):  # xdist worker: the controller collects nothing itself
        config.workeroutput["tinyinfer"] = {"collected": {d: sorted(ids) for d, ids in t.collected.items()},
                                            "partial": sorted(t.partial)}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: take each worker's view of the collection."""
    out = getattr(node, "workeroutput", {}).get("tinyinfer")
    if out:
        t = node.config._tinyinfer
        for day, ids in out["collected"].items():
            t.collected[day].update(ids)
        t.partial.update(out["partial"])


_CONFIG = None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    global _CONFIG
    _CONFIG = session.config


def pytest_sessionfinish(session, exitstatus):
    """A day's whole checker ran: every test passed -> record the day; one failed -> forget it."""
    config = session.config
    if TIER == "sim":
        from shared.course import compile_check
        compile_check.stop()
    t = config._tinyinfer
    if hasattr(config, "workerinput") or t.track != "days":
        return
    for day, ids in sorted(t.collected.items()):
        if day in t.partial:
            continue
        seen = t.outcomes.get(day, {})
        counts = Counter(seen.values())
        try:
            if counts["failed"]:
                if progress.forget(day):
                    t.forgotten.append(day)
            elif counts["passed"] and ids <= seen.keys():  # every test ran (no -x stop, no interrupt)
                progress.record(day, t.tier, counts["passed"], counts["skipped"])
                t.recorded.append(day)
        except OSError as e:
            t.errors.append(f"day {day:02d}: progress not saved: {e}")


def _what_the_engine_does(day: int, track: str, tier: str) -> str:
    """Claim the engine uses a day's code only for components on its path in this mode."""
    d = syllabus.day(day)
    if not d.provides:
        return "a building block for later days"
    from shared.engine.capabilities import capabilities, engine_components  # shared.engine imports torch
    on_path = engine_components(capabilities(track, tier, simulate=True))  # the mode that runs the learner's code
    used = [n for n in d.provides if n in on_path and registry.source(n, track).day == day]
    if not used:
        return f"a building block for later days (the engine does not call {', '.join(d.provides)})"
    names = ", ".join(used)
    if tier == "sim":
        return (f"`tinyinfer generate --simulate --model tiny` now runs your {names} "
                "(without a GPU, plain `generate` runs the PyTorch reference)")
    return f"the engine now uses your {names}"


def _only_stubs_failed(t) -> bool:
    return bool(t.todo) and not t.other_failures


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Around pytest's own summary: the progress lines come after its short test summary, so the
    line that says what to do next is near the end. When every failure is a stub's
    NotImplementedError, there is no FAILURES section (the short summary has one line per test)
    and the line that says what to fill in comes last of all (pytest_unconfigure)."""
    if _only_stubs_failed(config._tinyinfer):
        config.option.tbstyle = "no"
    try:
        return (yield)
    finally:
        _tinyinfer_summary(terminalreporter, exitstatus, config)


def _todo_lines(t) -> list[str]:
    """Per day: the functions whose NotImplementedError failed its tests, and the file to fill in."""
    lines = []
    for day, todo in sorted(t.todo.items(), key=lambda kv: kv[0] or 0):
        files = defaultdict(list)
        for where, name in sorted(todo):
            files[where].append(name)
        what = "; ".join(f"{', '.join(names)} in {where}" for where, names in files.items())
        if day is None:
            lines.append(f"not written yet: fill in {what}")
            continue
        d = syllabus.day(day)
        lines.append(f"day {day:02d}: not written yet -- fill in {what} (lesson: {d.lesson}, "
                     f"hints: `tinyinfer hint {day}`), then run `pytest checkers/{d.tag}` again")
    return lines


def pytest_unconfigure(config):
    """The stub's summary, after pytest's own last line: the one thing to do next."""
    t = getattr(config, "_tinyinfer", None)
    if t is None or hasattr(config, "workerinput") or not _only_stubs_failed(t):
        return
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        for line in _todo_lines(t):
            tr.write_line(line, yellow=True)


def _tinyinfer_summary(terminalreporter, exitstatus, config):
    t = config._tinyinfer
    if t.track != "days":
        return
    tr = terminalreporter
    for line in progress.problems() + t.errors:
        tr.write_line("tinyinfer progress: " + line, red=True)
    for day, seen in sorted(t.outcomes.items()):
        d = syllabus.day(day)
        counts = Counter(seen.values())
        if day in t.recorded:
            tr.write_line(f"day {day:02d} ({d.title}): finished in the {t.tier} tier -- recorded -- "
                          f"{_what_the_engine_does(day, t.track, t.tier)}. Next: `tinyinfer next`", green=True)
        elif counts["failed"] and _only_stubs_failed(t):
            continue                  # pytest_unconfigure says what to fill in, last
        elif counts["failed"]:
            tr.write_line(f"day {day:02d}: {counts['passed']} passed, {counts['failed']} failing -- edit "
                          f"days/{d.tag}/ (lesson: {d.lesson}, hints: `tinyinfer hint {day}`)", yellow=True)
            if day in t.forgotten:
                tr.write_line(f"day {day:02d}: no longer recorded as finished -- the engine uses the reference "
                              "for it until its whole checker passes again", yellow=True)
        elif day in t.partial and counts["passed"]:
            tr.write_line(f"day {day:02d}: only part of its checker ran -- not recorded; "
                          f"`pytest checkers/{d.tag}` records it")


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def track(pytestconfig) -> str:
    return pytestconfig._tinyinfer.track


@pytest.fixture(scope="session")
def tier(pytestconfig) -> str:
    return pytestconfig._tinyinfer.tier


@pytest.fixture(scope="module")
def day(request, pytestconfig):
    """The module under test: days.day_NN or solutions.day_NN, by --track."""
    number = _day_of(request.node.nodeid)
    if number is None:
        pytest.fail("the `day` fixture works only in checkers/day_NN/")
    return registry.day_module(number, pytestconfig._tinyinfer.track)


@pytest.fixture(scope="session")
def ops(pytestconfig):
    """Earlier days' components through the registry (the learner's, if finished, else reference)."""
    return registry.Ops(pytestconfig._tinyinfer.track)


@pytest.fixture(scope="session")
def device():
    from shared.runtime import gpu
    return gpu.device()


class Sizes:
    """sizes(tiny=..., real=...) picks by tier: the simulator runs one OS thread per CUDA thread."""

    def __init__(self, tier: str):
        self.tier = tier
        self.sim = tier == "sim"

    def __call__(self, tiny, real):
        return tiny if self.sim else real


@pytest.fixture(scope="session")
def sizes(tier) -> Sizes:
    return Sizes(tier)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The seeded random tiny Llama (made once per session)."""
    from shared import models
    return models.resolve("tiny")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from shared import models
    if not _model_ready():
        pytest.skip("SmolLM2 not prepared: run `tinyinfer model prepare`")
    return models.resolve("smollm2")
