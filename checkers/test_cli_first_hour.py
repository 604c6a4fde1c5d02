"""What a newcomer meets in the first hour of `tinyinfer`: every --help explains every argument,
flags that do nothing say so, a bad flag names itself, a prompt that is not UTF-8 is one line,
`--model tiny` says its weights are random, `--simulate` shows progress, `doctor` names the days
a GPU is too old for. All in-process or one short subprocess; no model download (tiny model).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from shared import REPO, cli, models
from shared.course import syllabus


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc, err) -> str:
    lines = [line for line in err.splitlines() if line.startswith("tinyinfer: error:")]
    assert rc == 2, f"exit code {rc}, expected 2; stderr:\n{err}"
    assert len(lines) == 1 and "Traceback" not in err, f"expected one error line, got:\n{err}"
    return lines[0]


@pytest.fixture
def no_engine(monkeypatch):
    """Fails the test if a model would be loaded: these errors must come before any."""
    import shared.engine

    def refuse(*a, **k):
        raise AssertionError("the Engine was built: the flag should have been refused first")
    monkeypatch.setattr(shared.engine, "Engine", refuse)


@pytest.fixture
def no_progress(tmp_path, monkeypatch):
    """An empty progress file: the days track has finished nothing (no paged cache)."""
    monkeypatch.setenv("TINYINFER_PROGRESS", str(tmp_path / "progress.json"))


# ---- --help -------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_subcommand_has_a_description_and_every_argument_has_help():
    parser = cli.build_parser()
    commands = dict(_subparsers(parser))
    assert {"status", "next", "check", "generate", "bench", "doctor", "render", "mutants"} <= set(commands)
    missing = []
    for name, sub in commands.items():
        if not (sub.description or "").strip():
            missing.append(f"tinyinfer {name}: no description")
        for action in sub._actions:
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"tinyinfer {name}: {'/'.join(action.option_strings) or action.dest} has no help")
    assert not missing, "\n".join(missing)


def test_help_runs_for_every_subcommand(capsys):
    for name, _ in _subparsers(cli.build_parser()):
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert "usage: tinyinfer " + name in capsys.readouterr().out


# ---- flags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--block-size", "--num-blocks"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_block_flag_names_the_flag(flag, value, capsys, no_engine):
    rc, out, err = run_cli(["generate", "hi", "--model", "tiny", flag, value], capsys)
    line = one_error(rc, err)
    assert flag in line and value in line, line
    assert "block_size and num_blocks" not in line and out == ""


@pytest.mark.parametrize("argv,named", [(["--port", "0"], "--port"), (["--port", "70000"], "--port"),
                                        (["--max-num-seqs", "0"], "--max-num-seqs"),
                                        (["--max-pending", "-1"], "--max-pending"), (["--max-len", "0"], "--max-len"),
                                        (["--api-key", ""], "--api-key"), (["--num-blocks", "0"], "--num-blocks")])
def test_bad_serve_flag_is_one_line_before_any_model(argv, named, capsys, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the LLM was built: the flag should have been refused first")
    monkeypatch.setattr(cli.registry, "Ops", refuse)
    rc, out, err = run_cli(["serve", "--model", "tiny", *argv], capsys)
    assert named in one_error(rc, err) and out == ""


def test_serve_binds_localhost_by_default():
    args = cli.build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.api_key is None


def test_block_flags_ignored_before_day_31_say_so(tiny_model, no_progress, capsys):
    rc, out, err = run_cli(["generate", "hi", "--model", "tiny", "--track", "days", "--max-new-tokens", "2",
                            "--block-size", "8", "--num-blocks", "4"], capsys)
    assert rc == 0, err
    notes = [line for line in err.splitlines() if "ignored" in line]
    assert len(notes) == 1 and "--block-size" in notes[0] and "--num-blocks" in notes[0] and "31" in notes[0], err


def test_block_flags_ignored_with_no_paged_say_why(tiny_model, capsys):
    rc, out, err = run_cli(["generate", "hi", "--model", "tiny", "--track", "solutions", "--max-new-tokens", "2",
                            "--no-paged", "--num-blocks", "4"], capsys)
    assert rc == 0, err
    assert any("--num-blocks" in line and "--no-paged" in line for line in err.splitlines()), err


def test_block_flags_used_by_the_paged_cache_are_not_called_ignored(tiny_model, capsys):
    if not cli.registry.has_feature("paged", "solutions"):
        pytest.skip("the solutions track has no paged cache yet")
    rc, out, err = run_cli(["generate", "hi", "--model", "tiny", "--track", "solutions", "--max-new-tokens", "2",
                            "--block-size", "4"], capsys)
    assert rc == 0 and "ignored" not in err and "paged" in err, err


def test_no_block_flags_no_note(tiny_model, no_progress, capsys):
    rc, out, err = run_cli(["generate", "hi", "--model", "tiny", "--track", "days", "--max-new-tokens", "1"], capsys)
    assert rc == 0 and "ignored" not in err, err


def test_tiny_says_its_weights_are_random(tiny_model, capsys):
    rc, out, err = run_cli(["generate", "hi", "--model", "tiny", "--max-new-tokens", "1"], capsys)
    assert rc == 0 and "random" in err, err


# ---- prompts that are not UTF-8 -----------------------------------------------------------------
@pytest.mark.parametrize("prompt,byte,pos", [("\udcff\udcfe", "0xff", 0), ("ab\udce9c", "0xe9", 2),
                                             ("é\udc80", "0x80", 2)])
def test_prompt_not_utf8_is_one_line(prompt, byte, pos, capsys, no_engine):
    """Python decodes argv with surrogateescape: each undecodable byte is a lone surrogate."""
    rc, out, err = run_cli(["generate", prompt, "--model", "tiny"], capsys)
    line = one_error(rc, err)
    assert "UTF-8" in line and byte in line and f"position {pos}" in line, line


@pytest.mark.skipif(os.name == "nt", reason="argv is not bytes on Windows")
def test_prompt_not_utf8_from_a_shell(tmp_path):
    """The real path: Latin-1 bytes in argv, as `tinyinfer generate $'\\xff\\xfe'` passes them."""
    env = dict(os.environ, TINYINFER_HOME=str(tmp_path), LC_ALL="C.UTF-8")
    r = subprocess.run([sys.executable.encode(), b"-m", b"shared.cli", b"generate", b"caf\xe9", b"--model", b"tiny"],
                       cwd=REPO, env=env, capture_output=True, timeout=120)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "0xe9" in err and "position 3" in err, err


# ---- --simulate progress --------------------------------------------------------------------------
class FakeEngine:
    """Stands in for the simulator engine (minutes per token): yields three token ids."""

    def __init__(self, *a, **k):
        self.use_cache, self.use_paged, self.track, self.model_dir = True, False, "solutions", REPO
        self.ops = SimpleNamespace(stream=lambda ids, tok: (SimpleNamespace(text=f"<{i}>") for i in ids))
        self.tokenizer = None
        self.stats = SimpleNamespace(prompt_tokens=2, new_tokens=3, ttft_s=1.0, decode_tok_s=0.1)

    def describe(self):
        return "fake simulator engine"

    def prompt_ids(self, prompt, chat=False):
        return [1, 2]

    def generate_ids(self, ids, **kw):
        yield from (7, 8, 9)


@pytest.mark.parametrize("stream", [False, True])
def test_simulate_shows_progress(stream, capsys, monkeypatch):
    import shared.engine
    monkeypatch.setattr(shared.engine, "Engine", FakeEngine)
    monkeypatch.setenv("TINYINFER_TIER", "sim")
    rc, out, err = run_cli(["generate", "hi", "--simulate", "--model", "tiny", "--max-new-tokens", "3"]
                           + (["--stream"] if stream else []), capsys)
    assert rc == 0 and out.strip() == "<7><8><9>", (out, err)
    assert re.search(r"prefill of 2 prompt tokens", err), err
    ticks = re.findall(r"\[token (\d)/3 after", err)
    assert ticks == ([] if stream else ["1", "2", "3"]), err   # streaming: the text itself shows each token


# ---- which GPU ------------------------------------------------------------------------------------
def test_days_beyond_a_gpu():
    assert cli.days_beyond((9, 0)) == [] and cli.days_beyond((8, 0)) == []
    t4 = cli.days_beyond((7, 5))
    assert len(t4) == 1 and "day 26" in t4[0] and "sm_80" in t4[0]
    assert "sm_75" in cli.days_beyond((7, 0))[0], "older than the course's minimum"


def test_readme_states_the_gpu_needs():
    readme = (REPO / "README.md").read_text()
    assert "Which GPU do I need?" in readme
    assert f"sm_{cli.MIN_CC[0]}{cli.MIN_CC[1]}" in readme
    for day, (need, _) in cli.DAY_MIN_CC.items():
        assert re.search(rf"^\| {day} \| sm_{need[0]}{need[1]}\b", readme, re.M), f"README: no row for day {day}"
        assert syllabus.day(day).published


@pytest.mark.parametrize("cc,want", [((7, 5), "day 26 needs sm_80"), ((9, 0), "every published day runs on it")])
def test_doctor_reports_compute_capability(cc, want, capsys, monkeypatch):
    props = SimpleNamespace(name="Test GPU", total_memory=16 * 2**30, major=cc[0], minor=cc[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(models, "available", lambda: [])
    monkeypatch.setenv("TINYINFER_TIER", "sim")
    rc, out, _ = run_cli(["doctor"], capsys)
    assert f"compute capability {cc[0]}.{cc[1]}" in out and want in out, out
