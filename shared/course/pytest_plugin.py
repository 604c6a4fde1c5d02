"""The tinyinfer pytest plugin (loaded by `-p shared.course.pytest_plugin`): tracks, tiers, fixtures, progress.

--track days|solutions   whose code to check (default: days, or $TINYINFER_TRACK)
Tier: a CUDA GPU -> 'gpu'; none -> 'sim' (NUMBA_ENABLE_CUDASIM=1, set here before numba loads).
Progress: on the days track, a day whose whole checker passed is recorded in
.tinyinfer/progress.json, and the engine starts using that day's code.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

from shared.runtime.tier import select

TIER = select()  # must run before anything imports numba

import pytest  # noqa: E402

from shared.course import progress, registry, syllabus  # noqa: E402

DAY_DIR = re.compile(r"checkers[/\\]day_(\d\d)[/\\]")


def pytest_addoption(parser):
    parser.addoption("--track", choices=registry.TRACKS, default=None,
                     help="whose code to check: 'days' (yours, default) or 'solutions'")


def pytest_configure(config):
    track = config.getoption("--track") or registry.default_track()
    os.environ["TINYINFER_TRACK"] = track
    config._tinyinfer = SimpleNamespace(track=track, tier=TIER, results=defaultdict(lambda: defaultdict(int)))


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
        # The learner has not written this yet: one clear line instead of a traceback.
        rep.longrepr = f"NotImplementedError: {call.excinfo.value}"


def pytest_runtest_logreport(report):
    day = _day_of(report.nodeid)
    if day is None:
        return
    res = _CONFIG._tinyinfer.results[day]
    if report.when == "call" or report.outcome != "passed":
        res[report.outcome] += 1


_CONFIG = None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    global _CONFIG
    _CONFIG = session.config


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    t = config._tinyinfer
    if hasattr(config, "workerinput") or t.track != "days":
        return
    if config.option.keyword or config.option.markexpr:
        return  # a filtered run never counts as finishing a day
    t.recorded = []
    for day, res in sorted(t.results.items()):
        if res["failed"] == 0 and res["passed"] > 0:
            progress.record(day, t.tier, res["passed"], res["skipped"])
            t.recorded.append(day)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    t = config._tinyinfer
    if t.track != "days" or not t.results:
        return
    tr = terminalreporter
    for day, res in sorted(t.results.items()):
        d = syllabus.day(day)
        if day in getattr(t, "recorded", []):
            tr.write_line(f"day {day:02d} ({d.title}): finished in the {t.tier} tier -- recorded; "
                          f"the engine now uses your code. Next: `tinyinfer next`", green=True)
        elif res["failed"]:
            tr.write_line(f"day {day:02d}: {res['passed']} passed, {res['failed']} failing -- edit "
                          f"days/{d.tag}/ (lesson: {d.lesson}, hints: `tinyinfer hint {day}`)", yellow=True)


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
