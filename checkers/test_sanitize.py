"""shared/course/sanitize.py: every shared-memory kernel under compute-sanitizer (GPU tier, when the
tool is installed); in the sim tier the same exercises run directly, so they never rot."""
import pytest

from shared.course import sanitize, syllabus

DAYS = [d for d in sorted(sanitize.EXERCISES) if syllabus.day(d).published]


@pytest.mark.parametrize("day", DAYS, ids=[f"day_{d:02d}" for d in DAYS])
def test_exercise_launches_the_days_kernels(day):
    sanitize.exercise(day, "solutions")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("tool", sanitize.TOOLS)
def test_no_barrier_or_shared_memory_hazards(tool):
    """Each day's shared-memory kernels under compute-sanitizer: no divergent barrier, no race."""
    if sanitize.why_skip():
        pytest.skip(sanitize.why_skip())
    bad = []
    for day in DAYS:
        status, summary = sanitize.check(day, tool, "solutions")
        if status != "clean":
            bad.append(f"day {day:02d} {status}: {summary}")
    assert not bad, f"compute-sanitizer --tool {tool}: " + "; ".join(bad)
