"""`tinyinfer bench --speculative` (shared/spec_bench.py): plain vs each speculative method per prompt
family, in one run. Here on the tiny model and the CPU reference: the report's shape and the property
that matters on any hardware, greedy speculative decoding gives plain greedy's tokens."""
import json

import pytest

from shared import spec_bench, spec_prompts
from shared.course.testing import assert_cli_refuses


def test_families_are_big_enough_to_report():
    """The issue's floor: at least 8 prompts per family, no prompt twice."""
    for family, prompts in spec_prompts.FAMILIES.items():
        assert len(prompts) >= 8, f"{family}: {len(prompts)} prompts"
    texts = [p for prompts in spec_prompts.FAMILIES.values() for p in prompts.values()]
    assert len(set(texts)) == len(texts)


@pytest.fixture(scope="module")
def report():
    return spec_bench.run("tiny", dtype="fp32", methods=("ngram", "draft"), k=3, draft_layers=1, new_tokens=10,
                          per_family=2, progress=lambda line: None)


def test_every_method_gives_plain_greedys_tokens(report):
    assert [(r["family"], r["prompt"]) for r in report["rows"]] == \
        [(f, name) for f, prompts in spec_prompts.FAMILIES.items() for name in list(prompts)[:2]]
    for r in report["rows"]:
        assert r["prompt_tokens"] + report["new_tokens"] <= 256, "the tiny model's context (256) must hold the run"
        for m in ("ngram", "draft"):
            c = r[m]
            assert c["tokens"] == 10 and c["equal_tokens"] == 10, \
                f"{r['prompt']} {m}: {c['equal_tokens']} of {c['tokens']} tokens equal plain greedy's (fp32: all must)"
            assert 1.0 <= c["tokens_per_step"] <= report["k"] + 1, c
            assert 0.0 <= c["acceptance"] <= 1.0, c
    for family, by in report["families"].items():
        for m, s in by.items():
            assert s["all_equal_to_plain"], (family, m, s)


def test_report_files_say_what_ran(report, tmp_path):
    paths = spec_bench.write(report, tmp_path)
    assert [p.name for p in paths] == ["spec_bench.json", "spec_bench.md", "spec_tokens_per_step.png"]
    assert json.loads(paths[0].read_text())["rows"] == report["rows"]
    md = paths[1].read_text()
    for needle in ("grounded", "open", "tokens per step", "CPU", "say little about a GPU"):
        assert needle in md, needle
    assert paths[2].stat().st_size > 1000


def test_bad_options_are_one_line_before_any_model_loads(capsys, monkeypatch):
    from shared.engine import llm

    def no_model(*a, **kw):
        raise AssertionError("a model was loaded before the options were checked")
    monkeypatch.setattr(llm.Engine, "__init__", no_model)
    assert_cli_refuses(["bench", "--model", "tiny"], [
        ["--speculative", "bogus"], ["--speculative", "ngram", "--spec-k", "0"],
        ["--speculative", "ngram", "--spec-k", "many"], ["--speculative", "draft", "--draft-layers", "0"],
        ["--speculative", "ngram", "--new-tokens", "1"], ["--speculative", "ngram", "--peer"],
        ["--speculative", "ngram", "--reps", "0"], ["--speculative", ","]], capsys)


def test_tokens_equal_to_plain_counts_the_agreeing_prefix():
    assert spec_bench._leading_equal([5, 6, 7, 8], [5, 6, 9, 8]) == 2
    assert spec_bench._leading_equal([5, 6], [5, 6]) == 2
    assert spec_bench._leading_equal([4], [5]) == 0


def test_a_self_draft_deeper_than_the_model_is_refused_in_one_line(capsys):
    """The default depth shrinks to fit a shallow model; a depth the user gives is never changed."""
    assert_cli_refuses(["bench", "--model", "tiny", "--dtype", "fp32", "--speculative", "draft"],
                       [["--draft-layers", "99"]], capsys)


def test_the_pick_inside_the_verify_graph_keeps_plain_greedys_tokens(tiny_model):
    """With graphs the engine captures the greedy pick at the end of each verify graph (`picking`): a
    replay returns token ids, while the prefill still hands the loop logits. The simulator has no
    graphs, so DecodeGraphs calls the step itself: the same code path, checked here on the CPU."""
    from shared.engine import Engine
    from shared.engine.speculative import Speculator
    e = Engine(str(tiny_model), track="solutions", dtype="fp32")
    ids = e.prompt_ids("the cat sat on the mat. the cat sat on the mat. the cat", chat=False)
    plain = list(e.generate_ids(ids, max_new_tokens=12, ignore_eos=True))
    e.speculative, e.spec_k = "ngram", 3
    runner = e.runner(len(ids) + 12)
    e._speculator = sp = Speculator(e.ops, runner, "ngram", 3, graphs_cls=e.ops.DecodeGraphs)
    out = list(e.generate_ids(ids, max_new_tokens=12, ignore_eos=True))
    assert e._speculator is sp, "the engine built its own speculator: this test no longer reaches `picking`"
    assert out == plain, f"{out} != plain greedy {plain}"
    assert e.stats.spec.steps < len(out) - 1, "the n-gram drafts should have landed on this repeated text"
