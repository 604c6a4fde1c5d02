"""progress.json is the learner's work: never lost (corrupt file, concurrent writers), never faked
(partial runs, failing runs, edited files, claims about what the engine runs).

In-process tests use a temp progress file and a temp days/ tree; the others run real pytest sessions
on a fake checkers/day_13/ (no autoloaded plugins, no torch: each takes well under a second).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from argparse import Namespace
from types import SimpleNamespace

import pytest

from shared import REPO, cli
from shared.course import progress, pytest_plugin, registry


@pytest.fixture
def prog(tmp_path, monkeypatch):
    """A temp progress file and a temp days/ tree (each record hashes days/day_NN/*.py)."""
    monkeypatch.setenv("TINYINFER_PROGRESS", str(tmp_path / "progress.json"))
    monkeypatch.setattr(progress, "DAYS", tmp_path / "days")
    return tmp_path / "progress.json"


def _status(capsys) -> str:
    assert cli.cmd_status(Namespace(track="days")) == 0
    return capsys.readouterr().out


def test_corrupt_file_is_kept_aside_reported_and_never_overwritten(prog, capsys):
    text = '{"version": 1, "days": {"day_01": {"tier": "sim"}, "day_02": {"tier": "sim"'  # truncated
    prog.parent.mkdir(exist_ok=True)
    prog.write_text(text)
    assert progress.load() == {} and registry.finished("days") == set()
    kept = list(prog.parent.glob("progress.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == text
    assert "day_01, day_02" in " ".join(progress.problems())
    out = _status(capsys)
    assert "warning:" in out and kept[0].name in out

    progress.record(5, "sim", 3, 0)  # the next passing day writes a fresh file beside the kept one
    assert progress.finished_days() == {5} and kept[0].read_text() == text
    prog.write_text("not json")
    progress.record(6, "sim", 1, 0)
    assert len(list(prog.parent.glob("progress.json.corrupt-*"))) == 2, "a second corrupt file is kept too"


def _record_days(numbers, start):
    start.wait()
    for n in numbers:
        progress.record(n, "sim", 1, 0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_writers_lose_nothing(prog, monkeypatch):
    """Four processes record ten days each at the same moment, five times: without the lock this
    loses days in most trials."""
    ctx = multiprocessing.get_context("fork")
    for trial in range(5):
        monkeypatch.setenv("TINYINFER_PROGRESS", str(prog.with_name(f"progress-{trial}.json")))
        start = ctx.Barrier(4)
        procs = [ctx.Process(target=_record_days, args=(range(10 * k + 1, 10 * k + 11), start)) for k in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert all(p.exitcode == 0 for p in procs)
        assert progress.finished_days() == set(range(1, 41)), f"trial {trial} lost days"


def test_edited_files_make_a_day_stale_until_it_passes_again(prog, capsys):
    day = progress.DAYS / "day_10"
    day.mkdir(parents=True)
    (day / "rmsnorm.py").write_text("def rmsnorm(x, weight, eps): ...\n")
    progress.record(10, "sim", 5, 0)
    assert 10 in registry.finished("days") and registry.source("rmsnorm", "days").day == 10

    (day / "rmsnorm.py").write_text("def rmsnorm(x, weight, eps): return x  # broken edit\n")
    assert progress.stale_days() == {10} and 10 in progress.finished_days()
    assert 10 not in registry.finished("days") and registry.source("rmsnorm", "days").day is None
    assert "changed since it passed: run pytest checkers/day_10" in _status(capsys)

    progress.record(10, "sim", 5, 0)  # the checker passes again on the new files
    assert progress.stale_days() == set() and registry.source("rmsnorm", "days").day == 10
    (day / "extra.py").write_text("")  # a new file counts as a change too
    assert progress.stale_days() == {10}
    assert cli.cmd_reset(Namespace(day="10")) == 0  # reset forgets the day and its stale mark
    assert progress.stale_days() == set() and "changed since" not in _status(capsys)


def test_records_without_a_hash_are_trusted_and_reads_never_raise(prog):
    prog.parent.mkdir(exist_ok=True)
    prog.write_text(json.dumps({"version": 1, "days": {"day_03": {"tier": "sim"}, "bogus": 1}}))
    assert registry.finished("days") == {3}
    prog.write_text(json.dumps([1, 2]))  # valid JSON, wrong shape
    assert progress.load() == {} and progress.problems()


def test_the_engine_claim_only_for_components_on_its_path(prog):
    say = pytest_plugin._what_the_engine_does
    for tier in ("gpu", "sim"):
        assert say(3, "days", tier) == "a building block for later days (the engine does not call row_sum, row_max)"
    assert say(13, "days", "gpu") == "a building block for later days"
    (progress.DAYS / "day_10").mkdir(parents=True)
    progress.record(10, "gpu", 5, 0)
    assert say(10, "days", "gpu") == "the engine now uses your rmsnorm"
    assert "--simulate" in say(10, "days", "sim")

    lines = []  # pytest's summary after day 03 was recorded
    t = SimpleNamespace(track="days", tier="gpu", outcomes={3: {"t": "passed"}}, recorded=[3], forgotten=[],
                        partial=set(), errors=[])
    pytest_plugin._tinyinfer_summary(SimpleNamespace(write_line=lambda line, **kw: lines.append(line)),
                                          0, SimpleNamespace(_tinyinfer=t))
    assert len(lines) == 1 and "recorded -- a building block" in lines[0] and "uses your" not in lines[0]


# ---- real pytest sessions on a fake checkers/day_NN ----------------------------------------------
def _checker(root, day: int):
    """A rootdir with checkers/day_NN/{test_a,test_b}.py; BREAK=1 makes test_one fail."""
    (root / "pytest.ini").write_text("[pytest]\naddopts = -p shared.course.pytest_plugin -p no:cacheprovider\n")
    folder = root / "checkers" / f"day_{day:02d}"
    folder.mkdir(parents=True)
    (folder / "test_a.py").write_text("import os\n\ndef test_one():\n    assert not os.environ.get('BREAK')\n\n"
                                      "def test_two():\n    pass\n")
    (folder / "test_b.py").write_text("def test_three():\n    pass\n")
    return root


def _pytest(root, *args, broken=False) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), TINYINFER_PROGRESS=str(root / "progress.json"),
               TINYINFER_TIER="sim", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", BREAK="1" if broken else "")
    r = subprocess.run([sys.executable, "-m", "pytest", "--track", "days", *args], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    return r.stdout + r.stderr


def _recorded(root) -> set[str]:
    p = root / "progress.json"
    return set(json.loads(p.read_text())["days"]) if p.exists() else set()


# Day 13 provides no component, so these sessions never import the engine (nor torch): fast.
@pytest.mark.parametrize("args", [["checkers/day_13/test_a.py::test_two"], ["checkers/day_13", "-k", "two"],
                                  ["checkers/day_13", "--deselect", "checkers/day_13/test_b.py::test_three"],
                                  ["checkers/day_13/test_a.py"]],
                         ids=["node-id", "-k", "--deselect", "one-file-of-two"])
def test_a_partial_run_never_records(tmp_path, args):
    root = _checker(tmp_path, 13)
    out = _pytest(root, *args)
    assert "passed" in out and _recorded(root) == set(), out
    assert "only part of its checker ran" in out


def test_whole_run_records_and_a_failing_whole_run_forgets(tmp_path):
    root = _checker(tmp_path, 13)
    (root / "progress.json").write_text('{"days": {"day_01": ')  # corrupt: kept aside, warned about
    out = _pytest(root, "checkers/day_13")
    assert "3 passed" in out and _recorded(root) == {"day_13"}, out
    assert json.loads((root / "progress.json").read_text())["days"]["day_13"]["files"] == progress.digest(13)
    assert "progress.json.corrupt-" in out and "day_01" in out, "pytest's summary warns about the kept file"

    out = _pytest(root, "checkers/day_13/test_a.py::test_one", broken=True)  # partial: leaves it recorded
    assert "1 failed" in out and _recorded(root) == {"day_13"}, out
    out = _pytest(root, "checkers/day_13", broken=True)
    assert "1 failed" in out and _recorded(root) == set(), out
    assert "no longer recorded" in out


def test_xdist_controller_learns_what_the_workers_collected(tmp_path):
    """Under xdist the controller collects nothing itself."""
    pytest.importorskip("xdist", reason="needs pytest-xdist: pip install -e '.[dev]'")
    root = _checker(tmp_path, 13)
    out = _pytest(root, "-p", "xdist", "-n", "2", "checkers/day_13", "-k", "one or two")
    assert "2 passed" in out and _recorded(root) == set(), out
    out = _pytest(root, "-p", "xdist", "-n", "2", "checkers/day_13")
    assert "3 passed" in out and _recorded(root) == {"day_13"}, out
