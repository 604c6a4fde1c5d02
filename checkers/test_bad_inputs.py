"""Bad inputs a new user meets: broken model folders, hostile chat templates, bad flags, a tier
that is not there, `model prepare` misused. Each must end as one line on stderr
(`tinyinfer: error: ...`) and exit code 2 -- never a traceback, never a silently wrong model.

A broken folder is a copy of the tiny model with one thing changed. Every case runs `cli.main`
in-process on both paths: the PyTorch reference (what `tinyinfer generate` uses without a GPU)
and the solutions track (day 06-08 loaders; `--simulate` in the sim tier). A few run the real
command line in a subprocess, to show no traceback gets past `main`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from shared import REPO, cli, models
from shared.runtime import threads

ST = "model.safetensors"


# ---- crafting broken folders -------------------------------------------------------------------
def split(path: Path):
    """(raw bytes, header length, header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8:8 + n]), raw[8 + n:]


def write(path: Path, header, data: bytes) -> None:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def raw_edit(change):
    def apply(d: Path):
        p = d / ST
        raw, n, _, _ = split(p)
        p.write_bytes(change(raw, n))
    return apply


def header_edit(change):
    """Edit the header dict; the tensors in offset order are passed along (first, second, ..., last)."""
    def apply(d: Path):
        p = d / ST
        _, _, header, data = split(p)
        order = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
        data = change(header, order, data) or data
        write(p, header, data)
    return apply


def overlap(h, order, data):
    a, b = h[order[0]]["data_offsets"], h[order[1]]["data_offsets"]
    h[order[1]]["data_offsets"] = [a[0] + 4, a[0] + 4 + b[1] - b[0]]


def shift_last(by):
    def change(h, order, data):
        b, e = h[order[-1]]["data_offsets"]
        h[order[-1]]["data_offsets"] = [b + by, e + by]
    return change


def hole(h, order, data):
    for k in order:
        b, e = h[k]["data_offsets"]
        h[k]["data_offsets"] = [b + 8, e + 8]
    return bytes(8) + data


def duplicate_key(d: Path):
    p = d / ST
    _, _, header, data = split(p)
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__")
    text = json.dumps(header)[:-1] + f', "{name}": ' + json.dumps({**info, "shape": info["shape"][::-1]}) + "}"
    write(p, text.encode(), data)


def set_tensor_field(field, value):
    def change(h, order, data):
        h[order[-1]][field] = value(h[order[-1]]) if callable(value) else value
    return change


def negative_same_product(t):
    """[-a, -b] keeps the product (the byte count) right; a 1-D shape [a] becomes [-a, -1]."""
    shape = t["shape"] if len(t["shape"]) % 2 == 0 else t["shape"] + [1]
    return [-d for d in shape]


def deep_header(d: Path):
    p = d / ST
    _, _, _, data = split(p)
    write(p, b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", data)


def int8_weight(d: Path):
    from safetensors.torch import load_file, save_file
    t = load_file(str(d / ST))
    t["model.norm.weight"] = t["model.norm.weight"].to(torch.int8)
    save_file(t, str(d / ST))


def replace_with_dir(name):
    def apply(d: Path):
        (d / name).unlink()
        (d / name).mkdir()
    return apply


def remove(name):
    return lambda d: (d / name).unlink()


def write_text(name, text):
    return lambda d: (d / name).write_text(text)


def config_edit(**changes):
    """Change config.json; a value of ... removes the key."""
    def apply(d: Path):
        c = json.loads((d / "config.json").read_text())
        c.update(changes)
        (d / "config.json").write_text(json.dumps({k: v for k, v in c.items() if v is not ...}))
    return apply


def tokenizer_config_edit(**changes):
    def apply(d: Path):
        c = json.loads((d / "tokenizer_config.json").read_text())
        c.update(changes)
        (d / "tokenizer_config.json").write_text(json.dumps(c))
    return apply


@dataclass
class Case:
    id: str
    breaks: Callable[[Path], None]
    file: str            # the file the message must name
    what: str = ""       # and a word that says what is wrong (reference path)
    chat: bool = False   # the problem shows when the chat template renders
    solutions: bool = True   # the day 06-08 solutions refuse it too (else: reference only)
    solution_names_file: bool = True


MARKER = "tinyinfer-template-ran-code"   # a hostile template tries to create this file


def hostile(template: str) -> str:
    return template.replace("CMD", f"'touch {MARKER}'")


# Every known way out of jinja2, each trying to run a shell command or read Python internals.
HOSTILE_TEMPLATES = {
    "cycler_globals": "{{ cycler.__init__.__globals__.os.system(CMD) }}",
    "joiner_globals": "{{ joiner.__init__.__globals__.os.system(CMD) }}",
    "namespace_globals": "{{ namespace.__init__.__globals__.os.system(CMD) }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'].system(CMD) }}",
    "class_mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "list_base_subclasses": "{{ [].__class__.__base__.__subclasses__() }}",
    "attr_filter": "{{ (cycler|attr('__init__')|attr('__globals__')).os.system(CMD) }}",
    "attr_globals": "{{ lipsum|attr('__globals__') }}",
    "item_lookup": "{{ cycler['__init__']['__globals__'] }}",
    "format_method": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "format_map": "{{ '{x.__class__}'.format_map({'x': messages}) }}",
    "format_filter": "{{ '%s'|format(messages.__class__) }}",
    "template_reference_context": "{{ self._TemplateReference__context }}",
    "helper_globals": "{{ raise_exception.__globals__ }}",
    "map_attribute": "{{ messages|map(attribute='__class__')|list }}",
    "loop_internals": "{% for m in messages %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "mutate_messages": "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
}

CASES = [
    # safetensors (the file the engine reads 135M numbers from)
    Case("truncated_file", raw_edit(lambda r, n: r[:len(r) // 2]), ST, "truncated"),
    Case("truncated_header", raw_edit(lambda r, n: r[:8 + n // 2]), ST, "past the end"),
    Case("empty_file", raw_edit(lambda r, n: b""), ST, "truncated"),
    Case("shorter_than_8_bytes", raw_edit(lambda r, n: r[:5]), ST, "truncated"),
    Case("header_length_2**63", raw_edit(lambda r, n: struct.pack("<Q", 2**63) + r[8:]), ST, "past the end"),
    Case("header_length_2**64-1", raw_edit(lambda r, n: b"\xff" * 8 + r[8:]), ST, "past the end"),
    Case("header_not_json", raw_edit(lambda r, n: r[:8] + b"#" * n + r[8 + n:]), ST, "JSON"),
    Case("header_not_utf8", raw_edit(lambda r, n: r[:8] + b"\xff\xfe" * (n // 2) + r[8 + n:]), ST, "UTF-8"),
    Case("header_json_list", raw_edit(lambda r, n: r[:8] + b"[1, 2]".ljust(n) + r[8 + n:]), ST, "object"),
    Case("header_nested_100k_deep", deep_header, ST, "deep"),
    Case("duplicate_tensor_name", duplicate_key, ST, "twice"),
    Case("metadata_not_strings", header_edit(lambda h, o, d: h.__setitem__("__metadata__", {"format": 1})),
         ST, "__metadata__"),
    Case("overlapping_offsets", header_edit(overlap), ST, "overlap"),
    Case("offsets_past_the_end", header_edit(shift_last(64)), ST, "past the data"),
    Case("huge_offsets", header_edit(set_tensor_field("data_offsets", lambda t: [2**70, 2**70 + t["data_offsets"][1]
                                                                                  - t["data_offsets"][0]])),
         ST, "past the data"),
    Case("hole_before_first_tensor", header_edit(hole), ST, "hole"),
    Case("bytes_after_last_tensor", raw_edit(lambda r, n: r + bytes(64)), ST, "no tensor"),
    Case("unknown_dtype", header_edit(set_tensor_field("dtype", "Q4_K")), ST, "dtype"),
    Case("negative_shape", header_edit(set_tensor_field("shape", negative_same_product)), ST, "shape"),
    Case("huge_shape", header_edit(set_tensor_field("shape", [2**40, 2**40])), ST, "needs"),
    Case("safetensors_is_a_directory", replace_with_dir(ST), ST, "folder"),
    Case("truncated_after_prepare", raw_edit(lambda r, n: r[:-100]), ST, "truncated"),
    Case("no_safetensors_file", remove(ST), "no *.safetensors"),
    Case("int8_weights", int8_weight, ST, "I8", solutions=False),
    # config.json
    Case("config_missing_vocab_size", config_edit(vocab_size=...), "config.json", "vocab_size"),
    Case("config_zero_heads", config_edit(num_attention_heads=0), "config.json", "num_attention_heads"),
    Case("config_kv_heads_not_dividing", config_edit(num_key_value_heads=3), "config.json", "num_key_value_heads"),
    Case("config_9_heads_3_kv_heads", config_edit(num_attention_heads=9, num_key_value_heads=3), ST, "shape",
         solution_names_file=False),   # day 07 names the folder and the tensor
    Case("config_hidden_size_wrong", config_edit(hidden_size=128, head_dim=...), ST, "shape",
         solution_names_file=False),
    Case("config_a_list", write_text("config.json", "[1, 2, 3]"), "config.json", "object"),
    Case("config_string_numbers", config_edit(hidden_size="64", num_hidden_layers="2"), "config.json", "integer"),
    Case("config_gemma", config_edit(model_type="gemma", architectures=["GemmaForCausalLM"]), "config.json", "gemma"),
    Case("config_qwen2", config_edit(model_type="qwen2", architectures=["Qwen2ForCausalLM"]), "config.json", "qwen2"),
    Case("config_not_json", write_text("config.json", "{'vocab_size': 260,}"), "config.json", "JSON"),
    Case("config_is_a_directory", replace_with_dir("config.json"), "config.json", "folder"),
    Case("config_yarn_rope", config_edit(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
         "config.json", "yarn"),
    Case("config_10**12_layers", config_edit(num_hidden_layers=10**12), "config.json", "num_hidden_layers",
         solutions=False),
    Case("config_negative_eps", config_edit(rms_norm_eps=-1), "config.json", "rms_norm_eps", solutions=False),
    Case("config_gelu_mlp", config_edit(hidden_act="gelu"), "config.json", "hidden_act", solutions=False),
    # tokenizer files
    Case("tokenizer_json_missing", remove("tokenizer.json"), "tokenizer.json", "missing"),
    Case("tokenizer_json_garbage", write_text("tokenizer.json", "not a tokenizer"), "tokenizer.json", "tokenizers"),
    Case("tokenizer_json_a_list", write_text("tokenizer.json", "[]"), "tokenizer.json", "tokenizers"),
    Case("tokenizer_config_not_json", write_text("tokenizer_config.json", "{"), "tokenizer_config.json", "JSON"),
    Case("chat_template_a_list", tokenizer_config_edit(chat_template=[{"name": "default", "template": "x"}]),
         "tokenizer_config.json", "string", chat=True),
    Case("chat_template_a_number", tokenizer_config_edit(chat_template=42), "tokenizer_config.json", "string", chat=True),
    Case("bos_token_a_number", tokenizer_config_edit(bos_token=7), "tokenizer_config.json", "bos_token", solutions=False),
    Case("chat_template_syntax_error", tokenizer_config_edit(chat_template="{% for %}"), "tokenizer_config.json",
         "TemplateSyntaxError", chat=True, solution_names_file=False),
] + [Case(f"template_{name}", tokenizer_config_edit(chat_template=hostile(t)), "tokenizer_config.json", "unsafe",
          chat=True, solution_names_file=False) for name, t in HOSTILE_TEMPLATES.items()]


@pytest.fixture
def broken(request, tmp_path, tiny_model):
    """A copy of the tiny model with the case's change applied; runs in tmp_path (the marker lands there)."""
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    request.param.breaks(d)
    return request.param, d


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, err, *want):
    errors = [line for line in err.splitlines() if line.startswith("tinyinfer: error:")]
    assert rc == 2, f"exit code {rc}, expected 2; stderr:\n{err}"
    assert len(errors) == 1 and "Traceback" not in err, f"expected one error line, got:\n{err}"
    for w in want:
        assert w in errors[0], f"the error should mention {w!r}: {errors[0]}"
    return errors[0]


SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def generate_argv(d: Path, track: str, chat: bool) -> list[str]:
    argv = ["generate", "hi", "--model", str(d), "--max-new-tokens", "1"] + (["--chat"] if chat else [])
    if track == "solutions":
        argv += ["--track", "solutions"] + (["--simulate"] if SIM else [])
    return argv


@pytest.mark.parametrize("broken", CASES, ids=[c.id for c in CASES], indirect=True)
@pytest.mark.parametrize("path", ["reference", "solutions"])
def test_broken_model_folder_is_one_line_and_exit_2(broken, path, capsys, monkeypatch):
    case, d = broken
    if path == "reference" and not SIM:
        pytest.skip("with a GPU, generate uses the track's loaders, not the reference")
    if path == "solutions" and not case.solutions:
        pytest.skip("the day 06-08 solutions stay lesson-sized; the reference refuses this")
    monkeypatch.setenv("TINYINFER_TIER", "sim" if SIM else "gpu")   # --simulate sets it; restore after
    monkeypatch.chdir(d.parent)
    rc, out, err = run_cli(generate_argv(d, path, case.chat), capsys)
    want = [case.what] if path == "reference" else []
    if path == "reference" or case.solution_names_file:
        want.append(case.file)
    assert_one_error_line(rc, err, *want)
    assert not (d.parent / MARKER).exists(), "the chat template ran a shell command"


# ---- the real command line ---------------------------------------------------------------------
def cli_subprocess(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def assert_subprocess_one_line(r, *want):
    return assert_one_error_line(r.returncode, r.stderr, *want)


def copy_tiny(tmp_path, tiny_model, change):
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    change(d)
    return d


@pytest.mark.skipif(not SIM, reason="the reference path is what generate uses without a GPU")
def test_subprocess_hostile_template_does_not_run(tmp_path, tiny_model):
    d = copy_tiny(tmp_path, tiny_model, tokenizer_config_edit(chat_template=hostile(HOSTILE_TEMPLATES["cycler_globals"])))
    r = cli_subprocess("generate", "hi", "--model", str(d), "--chat", cwd=tmp_path)
    assert_subprocess_one_line(r, "tokenizer_config.json", "unsafe")
    assert not (tmp_path / MARKER).exists(), "the chat template ran a shell command"


@pytest.mark.skipif(not SIM, reason="the reference path is what generate uses without a GPU")
def test_subprocess_truncated_weights(tmp_path, tiny_model):
    d = copy_tiny(tmp_path, tiny_model, raw_edit(lambda r, n: r[:-100]))
    r = cli_subprocess("generate", "hi", "--model", str(d))
    assert_subprocess_one_line(r, ST, "truncated")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_subprocess_solutions_refuse_gemma(tmp_path, tiny_model):
    d = copy_tiny(tmp_path, tiny_model, config_edit(model_type="gemma", architectures=["GemmaForCausalLM"]))
    r = cli_subprocess("generate", "hi", "--model", str(d), "--track", "solutions", *(["--simulate"] if SIM else []))
    assert_subprocess_one_line(r, "config.json", "gemma")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_subprocess_tier_gpu_without_a_gpu(tiny_model):
    r = cli_subprocess("generate", "hi", "--model", str(tiny_model), env={"TINYINFER_TIER": "gpu"})
    assert_subprocess_one_line(r, "TINYINFER_TIER=gpu")


# ---- sampling flags (checked by SamplingParams) ----------------------------------------------------
@pytest.mark.parametrize("flag,value,word", [
    ("--top-p", "0", "top_p"), ("--top-p", "5", "top_p"), ("--top-p", "nan", "top_p"),
    ("--top-k", "-4", "top_k"), ("--temperature", "nan", "temperature"), ("--temperature", "-1", "temperature"),
    ("--temperature", "inf", "temperature"), ("--max-new-tokens", "0", "max-new-tokens")])
def test_bad_sampling_flag_is_one_line(tiny_model, capsys, flag, value, word):
    rc, out, err = run_cli(["generate", "hi", "--model", str(tiny_model), flag, value], capsys)
    assert_one_error_line(rc, err, word)
    assert out == "", "nothing may be generated with a bad flag"


# ---- the tier and doctor --------------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path, tiny_model, monkeypatch):
    """A private model cache holding a copy of the tiny model."""
    monkeypatch.setenv("TINYINFER_HOME", str(tmp_path / "home"))
    shutil.copytree(tiny_model, tmp_path / "home" / models.TINY_DIR)
    return tmp_path / "home"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_tier_gpu_without_a_gpu_is_a_value_error(monkeypatch):
    from shared.runtime.tier import detect
    monkeypatch.setenv("TINYINFER_TIER", "gpu")
    with pytest.raises(ValueError, match="TINYINFER_TIER=gpu"):
        detect()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_doctor_flags_tier_gpu_without_a_gpu(cache, capsys, monkeypatch):
    monkeypatch.setenv("TINYINFER_TIER", "gpu")
    rc, out, _ = run_cli(["doctor"], capsys)
    assert rc == 1 and "TINYINFER_TIER=gpu" in out and "problems found" in out, out


def test_doctor_advises_the_cpu_wheel(cache, capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TINYINFER_TIER", raising=False)
    rc, out, _ = run_cli(["doctor"], capsys)
    assert "download.pytorch.org/whl/cpu" in out, out
    assert "tiny: ready, files checked" in out, out


@pytest.mark.parametrize("change,want", [
    (raw_edit(lambda r, n: r[:-100]), ST), (write_text("config.json", "[]"), "config.json"),
    (remove("tokenizer.json"), "tokenizer.json"), (config_edit(hidden_size=128, head_dim=...), ST)],
    ids=["truncated_weights", "config_a_list", "no_tokenizer", "hidden_size_wrong"])
def test_doctor_checks_the_files_not_only_their_presence(cache, capsys, change, want):
    change(cache / models.TINY_DIR)
    rc, out, _ = run_cli(["doctor"], capsys)
    line = next(line for line in out.splitlines() if line.startswith("model       tiny"))
    assert rc == 1 and "BROKEN" in line and want in line, out


# ---- CPU threads ------------------------------------------------------------------------------
def test_threads_respect_the_users_choice(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose()[0] == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    assert threads.choose()[0] == 2


def test_threads_default_is_the_idle_cores_at_most_4(monkeypatch):
    for var in threads.USER_VARS:
        monkeypatch.setenv(var, "not a number")   # ignored
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for load, want in [(0.0, 4), (5.2, 3), (7.9, 1), (40.0, 1)]:
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.choose()[0] == want, f"8 cores, load {load}"


def test_configure_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert threads.configure() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---- model prepare ------------------------------------------------------------------------------
def fake_prepared(home: Path) -> Path:
    d = home / models.SMOLLM2_DIR
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / ".complete").write_text(models.SMOLLM2_SHA256 + "\n")
    return d


@pytest.mark.parametrize("value,want", [("", "needs the path"), ("DIR", "is a folder"),
                                         ("garbage.gguf", "sha256"), ("missing.gguf", "no such file")])
def test_prepare_from_gguf_checks_the_file(cache, tmp_path, capsys, monkeypatch, value, want):
    fake_prepared(cache)   # even a prepared cache must not say "ready" for a bad file
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF" + bytes(100))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "_download_gguf", lambda tmp: pytest.fail("must not download"))
    arg = str(tmp_path) if value == "DIR" else value
    rc, out, err = run_cli(["model", "prepare", "--from-gguf", arg], capsys)
    assert_one_error_line(rc, err, want)
    assert "ready" not in out


def test_prepare_says_what_it_does_before_the_download(cache, capsys, monkeypatch):
    monkeypatch.setattr(models.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no network"))
    rc, out, err = run_cli(["model", "prepare"], capsys)
    assert_one_error_line(rc, err, "could not download")
    first = err.splitlines()[0]
    assert "downloading" in first and "minutes" in first, err
    assert not list(cache.glob(models.TEMP_PREFIX + "*")), "the temporary folder must be gone"


def test_model_list_refuses_prepare_flags(cache, capsys):
    rc, _, err = run_cli(["model", "list", "--from-gguf", "x.gguf"], capsys)
    assert_one_error_line(rc, err, "model prepare")


def test_stale_temp_folders_are_removed(cache):
    dead = cache / f"{models.TEMP_PREFIX}{2**22 + 12345}-abc"   # above Linux's largest pid
    mine = cache / f"{models.TEMP_PREFIX}{os.getpid()}-def"
    legacy = cache / "tmpxyz"
    for d in (dead, mine, legacy):
        (d / "model").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(legacy, (old, old))
    assert sorted(models.remove_stale_temp_dirs()) == sorted([dead, legacy])
    assert mine.exists() and not dead.exists() and not legacy.exists()


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_sigterm_while_preparing_removes_the_temp_folder(tmp_path):
    code = ("import sys, time; from pathlib import Path; from shared import models\n"
            "with models.staging_dir(Path(sys.argv[1])) as d:\n"
            "    (d / 'half-written').write_bytes(bytes(1000)); print(d, flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    staging = Path(p.stdout.readline().strip())
    assert staging.is_dir() and staging.name.startswith(models.TEMP_PREFIX)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert not staging.exists(), "SIGTERM left the half-written folder behind"
