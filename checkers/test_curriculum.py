"""Structure tests: the curriculum is whole and no checker passes vacuously.

Every published day has stub, solution, checker and lesson; stub and solution export the same
names with the same signatures; stubs still raise NotImplementedError; every day's checker
FAILS against the untouched stub (the main run shows it passes against the solution).
"""
import inspect
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from shared import REPO
from shared.course import readme, registry, syllabus

PUBLISHED = syllabus.published()
ids = [d.tag for d in PUBLISHED]


def test_syllabus_has_sixty_numbered_days():
    days = syllabus.days()
    assert [d.number for d in days] == list(range(1, 61))
    assert len({d.slug for d in days}) == 60, "slugs must be unique"
    assert set(d.phase for d in days) <= set(syllabus.phases())
    for d in days:
        assert d.lesson == f"notes/{d.tag}_{d.slug}.md", f"{d.tag}: lesson path must follow notes/day_NN_slug.md"
    assert PUBLISHED, "at least one day is published"
    in_order = [d.number for d in PUBLISHED if not d.ahead_of_order]
    assert in_order == list(range(1, len(in_order) + 1)), "days are published in order"
    for d in PUBLISHED:
        assert not d.ahead_of_order or d.number > len(in_order), f"{d.tag}: ahead_of_order but not ahead of order"


def test_every_provided_name_has_a_reference_or_a_later_owner():
    from shared import reference
    for d in PUBLISHED:
        for name in d.provides:
            assert hasattr(reference, name), f"{d.tag} provides {name!r} but shared/reference has no oracle for it"


@pytest.mark.parametrize("d", PUBLISHED, ids=ids)
def test_day_has_stub_solution_checker_lesson(d):
    for top in ("days", "solutions"):
        assert (d.path(top) / "__init__.py").exists(), f"{top}/{d.tag}/__init__.py missing"
    assert list(d.path("checkers").glob("test_*.py")), f"checkers/{d.tag}/ has no test file"
    assert (REPO / d.lesson).exists(), f"lesson {d.lesson} missing"


def _public_signature(obj):
    if inspect.isclass(obj):
        return {n: str(inspect.signature(m)) for n, m in vars(obj).items()
                if callable(m) and (not n.startswith("_") or n == "__init__")}
    return str(inspect.signature(obj))


@pytest.mark.parametrize("d", PUBLISHED, ids=ids)
def test_stub_and_solution_export_the_same_api(d):
    stub, sol = registry.day_module(d.number, "days"), registry.day_module(d.number, "solutions")
    assert sorted(stub.__all__) == sorted(sol.__all__), f"{d.tag}: stub exports {stub.__all__}, solution {sol.__all__}"
    assert set(d.provides) <= set(sol.__all__), f"{d.tag}: must export what it provides: {d.provides}"
    for name in sol.__all__:
        assert _public_signature(getattr(stub, name)) == _public_signature(getattr(sol, name)), \
            f"{d.tag}.{name}: stub and solution signatures differ"


@pytest.mark.parametrize("d", PUBLISHED, ids=ids)
def test_provided_names_keep_the_reference_signature(d):
    from shared import reference
    sol = registry.day_module(d.number, "solutions")
    for name in d.provides:
        ref, mine = getattr(reference, name), getattr(sol, name)
        if inspect.isclass(ref):
            continue
        want = [p.name for p in inspect.signature(ref).parameters.values() if p.kind != p.KEYWORD_ONLY]
        got = [p.name for p in inspect.signature(mine).parameters.values() if p.kind != p.KEYWORD_ONLY]
        assert got == want, f"{d.tag}.{name}{got} must take the reference's parameters {want}"
        required = {p.name for p in inspect.signature(ref).parameters.values() if p.kind == p.KEYWORD_ONLY}
        extra = [p.name for p in inspect.signature(mine).parameters.values() if p.kind == p.KEYWORD_ONLY
                 and p.default is inspect.Parameter.empty and p.name not in required]
        assert not extra, f"{d.tag}.{name}: extra keyword-only parameters need defaults"


@pytest.mark.parametrize("d", PUBLISHED, ids=ids)
def test_stub_still_raises_not_implemented(d):
    stub = registry.day_module(d.number, "days")
    marker = re.compile(rf'NotImplementedError\(f?"Day {d.number:02d}:')
    for name in stub.__all__:
        src = inspect.getsource(getattr(stub, name))
        assert marker.search(src), f'days/{d.tag}: {name} must raise NotImplementedError("Day {d.number:02d}: ...")'


def test_readme_day_table_matches_syllabus():
    text = (REPO / "README.md").read_text()
    assert readme.render(text) == text, "README's day table is stale: run `python -m shared.course.readme`"


def test_every_checker_fails_against_the_untouched_stubs(tmp_path):
    """One pytest run of all published checkers on the days track (the stubs): each day must fail
    (shared/course/first_failure.py skips a day's other tests after its first failure)."""
    xml = tmp_path / "stubs.xml"
    env = dict(os.environ, TINYINFER_PROGRESS=str(tmp_path / "progress.json"), TINYINFER_TRACK="days")
    subprocess.run([sys.executable, "-m", "pytest", *[f"checkers/{d.tag}" for d in PUBLISHED], "--track", "days",
                    "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "shared.course.first_failure", f"--junitxml={xml}", "-m", "not gpu and not bench"],
                   cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    failed = {d.number: 0 for d in PUBLISHED}
    for case in ET.parse(xml).getroot().iter("testcase"):
        m = re.search(r"day_(\d\d)", case.get("classname", "") + case.get("file", ""))
        if m and (case.find("failure") is not None or case.find("error") is not None):
            failed[int(m.group(1))] = failed.get(int(m.group(1)), 0) + 1
    vacuous = [f"day_{n:02d}" for n, count in failed.items() if count == 0]
    assert not vacuous, f"these checkers pass on the untouched stub: {vacuous}"
    assert not (tmp_path / "progress.json").exists(), "a stub must never be recorded as finished"
