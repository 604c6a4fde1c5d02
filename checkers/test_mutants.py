"""The mutants files are well formed: every published day has at least three mistakes in
checkers/day_NN/mutants.toml, and each still applies to its solution (every snippet found the
expected number of times, valid Python afterwards). Running them -- each day's checker against
each mistake, minutes -- is `tinyinfer mutants`; this only checks that they have not rotted."""
import pytest

from shared.course import mutants, syllabus

PUBLISHED = syllabus.published()


@pytest.mark.parametrize("d", PUBLISHED, ids=[d.tag for d in PUBLISHED])
def test_every_day_has_three_mutants_that_apply(d):
    path = d.path("checkers") / mutants.FILENAME
    assert path.exists(), (f"checkers/{d.tag}/{mutants.FILENAME} is missing: list at least three mistakes the "
                           "lesson warns about (format: shared/course/mutants.py), then `tinyinfer mutants "
                           f"{d.number}` must report every one killed")
    found = mutants.load(d.number)
    assert len(found) >= 3, f"checkers/{d.tag}/{mutants.FILENAME}: {len(found)} mutants, at least 3 wanted"
    for m in found:
        mutants.check(m)


def test_a_snippet_that_is_gone_fails_loudly():
    m = mutants.Mutant(1, "rotted", "a solution changed", (mutants.Edit("vector_add.py", "no such text", "x"),))
    with pytest.raises(mutants.MutantError, match="occurs 0 times"):
        mutants.check(m)


def test_an_edit_that_breaks_the_syntax_fails_loudly():
    m = mutants.Mutant(1, "broken", "not Python", (mutants.Edit("vector_add.py", "if i < n:", "if i < n"),))
    with pytest.raises(mutants.MutantError, match="not valid Python"):
        mutants.check(m)


def test_shards_split_the_mutants_without_overlap():
    every = mutants.select([1, 2, 3])
    shards = [mutants.select([1, 2, 3], f"{i}/3") for i in range(3)]
    assert sorted(m.id for s in shards for m in s) == sorted(m.id for m in every)
    with pytest.raises(mutants.MutantError):
        mutants.select([1], "3/3")
