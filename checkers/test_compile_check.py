"""The sim tier compiles every kernel it launches for real GPUs (shared/course/compile_check.py):
a kernel the simulator runs but numba cannot compile fails its launch in one line that names the
kernel and the compiler's complaint; the solutions compile."""
import importlib
import uuid

import pytest
import torch

from shared.course import compile_check
from shared.runtime import gpu

sim_only = pytest.mark.skipif(not gpu.SIM, reason="on a GPU numba compiles every launch for the real device")

PROBE = '''
from numba import cuda, float32

LOOKUP = {0: 1.0}
TILE = 32


@cuda.jit
def shared_sized_by_block(x, out):
    """Runs in the simulator; a GPU needs the shared array's size at compile time."""
    s = cuda.shared.array(cuda.blockDim.x, float32)
    t = cuda.threadIdx.x
    s[t] = x[t]
    cuda.syncthreads()
    out[t] = s[cuda.blockDim.x - 1 - t]


@cuda.jit
def python_object_inside(x, out):
    """A dict is a Python object: the simulator looks it up, numba cannot type it."""
    t = cuda.threadIdx.x
    out[t] = x[t] * LOOKUP[0]


@cuda.jit
def reversed_tile(x, out):
    s = cuda.shared.array(TILE, float32)
    t = cuda.threadIdx.x
    s[t] = x[t]
    cuda.syncthreads()
    out[t] = s[TILE - 1 - t]


@cuda.jit
def fp64_math(x, out):
    t = cuda.threadIdx.x
    out[t] = x[t] * 0.1 + 1e-300 * x[t]
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module of probe kernels the check treats like a day's, with its own cache and child process."""
    name = f"ccprobe_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compile_check, "PACKAGES", compile_check.PACKAGES + (name,))
    monkeypatch.setattr(compile_check, "CACHE", tmp_path / "cache")
    compile_check.stop()                       # the next child sees the probe's folder on its path
    yield importlib.import_module(name)
    compile_check.stop()


def launch(kernel, n=32):
    x = torch.arange(n, dtype=torch.float32)
    out = torch.zeros(n, dtype=torch.float32)
    gpu.launch(kernel, 1, n, x, out)
    return x, out


@sim_only
def test_shared_array_sized_by_block_dim_is_refused(probe):
    with pytest.raises(compile_check.CompileError) as e:
        launch(probe.shared_sized_by_block)
    msg = str(e.value)
    assert "\n" not in msg, "one line"
    assert "shared_sized_by_block does not compile for a GPU (sm_75)" in msg
    assert "shared.array" in msg and "compile-time constant" in msg
    assert ".py:11" in msg, "the line of the kernel that numba refuses"


@sim_only
def test_python_object_in_a_kernel_is_refused(probe):
    with pytest.raises(compile_check.CompileError, match=r"python_object_inside does not compile for a GPU") as e:
        launch(probe.python_object_inside)
    assert "\n" not in str(e.value)


@sim_only
def test_a_kernel_that_compiles_runs_and_is_cached(probe):
    x, out = launch(probe.reversed_tile)
    assert torch.equal(out, x.flip(0)), "the simulator still runs the kernel"
    assert list((compile_check.CACHE).glob("*.json")), "the result is cached on disk"
    compile_check.stop()
    compile_check._memo.clear()
    launch(probe.reversed_tile)                # same source, same types: the disk cache answers
    assert compile_check._server is None, "a cached kernel needs no child process"


@sim_only
def test_fp64_arithmetic_is_refused_where_ptx_is_made(probe):
    if not compile_check.has_nvvm():
        pytest.skip("no NVVM here (pip install -e .[cu13]): kernels are typed, not compiled to PTX")
    with pytest.raises(compile_check.CompileError, match=r"fp64_math on sm_75: \d+ fp64 instructions"):
        launch(probe.fp64_math)


@sim_only
def test_the_solutions_compile(track):
    """One module-level kernel calling a device function (day 24) and kernels made by a factory whose
    closure holds the sizes (day 05): both must compile, and the check must have run on them."""
    if track != "solutions":
        pytest.skip("the solutions' kernels (the days track checks yours in each day's checker)")
    from solutions.day_05 import matmul
    from solutions.day_24 import online_softmax
    x = torch.randn(3, 37)
    online_softmax(x, block_size=8)
    a, w = torch.randn(5, 7), torch.randn(6, 7)
    matmul(a, w)
    checked = {fn.__qualname__: complaint for (fn, _), complaint in compile_check._memo.items()
               if fn.__module__.startswith("solutions.")}      # not the probes of the tests before
    assert {"online_softmax_kernel"} <= checked.keys(), checked
    assert any("matmul" in k for k in checked), checked
    assert not any(checked.values()), checked


# ---- what the PTX scan and the one-line summary say (no compiler needed) -----------------------
def test_scan_ptx_flags_fp64_math_but_not_a_converted_argument():
    fp32 = "ld.param.f64 %fd1, [p];\ncvt.rn.f32.f64 %f1, %fd1;\nmul.f32 %f2, %f1, %f1;\n"
    assert compile_check.scan_ptx(fp32) is None
    fp64 = fp32 + "cvt.f64.f32 %fd2, %f2;\n\tfma.rn.f64 %fd3, %fd2, %fd2, %fd1;\n"
    assert "fp64 instructions" in compile_check.scan_ptx(fp64)
    assert compile_check.scan_ptx(fp64, fp64_allowed=True) is None


def test_scan_ptx_flags_a_local_memory_frame():
    ptx = ".local .align 4 .b8 \t__local_depot0[64];\nmul.f32 %f2, %f1, %f1;\n"
    assert "64-byte local-memory stack frame" in compile_check.scan_ptx(ptx)


def test_scan_ptx_leaves_out_libdevice_trig_reduction_only():
    """math.sin/math.cos on float32 inline libdevice's Payne-Hanek slow path (a 28-byte local
    array and one fp64 multiply by 2^-64 * pi/2): the library's, not the learner's. Any other fp64
    op, or a bigger frame, is still reported."""
    trig = (".local .align 4 .b8 \t__local_depot0[28];\ncvt.rn.f64.s64 %fd1, %rd22;\n"
            "\tmul.f64 \t%fd2, %fd1, 0d3BF921FB54442D19;\ncvt.rn.f32.f64 %f21, %fd2;\n")
    assert compile_check.scan_ptx(trig) is None
    assert "fp64 instructions" in compile_check.scan_ptx(trig + "\tmul.f64 %fd3, %fd2, 0d3FB999999999999A;\n")
    assert "local-memory" in compile_check.scan_ptx(trig.replace("[28]", "[64]"))


def test_summary_is_one_line_with_the_call_and_a_hint():
    err = Exception('No implementation of function Function(<function shared.array at 0x7f00>) found for '
                    'signature:\n \n >>> array(int32, class(float32))\n \nThere are 2 candidate implementations:'
                    '\nDuring: typing of call at /x/k.py (12)\n\nFile "/x/k.py", line 12:\n')
    line = compile_check._summary(err)
    assert "\n" not in line
    assert "shared.array" in line and "`array(int32, class(float32))`" in line and "k.py:12" in line
    assert "compile-time constant" in line


# ---- a stub's checker run: one line per test, then what to fill in (shared/course/pytest_plugin.py) ----
STUB_CHECKER = '''
import pytest

def vector_add():
    raise NotImplementedError("Day 01: vector_add is not written yet")

@pytest.mark.parametrize("n", range(6))
def test_stub(n):
    vector_add()
'''


def run_checker(tmp_path, extra=""):
    """pytest on a day folder whose tests all call a stub, in a subprocess with the course's plugin."""
    import os
    import subprocess
    import sys
    from shared import REPO
    day = tmp_path / "checkers" / "day_01"
    day.mkdir(parents=True)
    (day / "test_day_01.py").write_text(STUB_CHECKER + extra)
    env = dict(os.environ, TINYINFER_TIER="sim", TINYINFER_COMPILE_CHECK="0",
               TINYINFER_PROGRESS=str(tmp_path / "progress.json"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "pytest", str(day), "--track", "days", "-ra", "-p", "no:cacheprovider",
                          "-p", "no:randomly", "-p", "shared.course.pytest_plugin", "-c", os.devnull, "--rootdir", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return out.stdout.strip().splitlines()


def test_a_stub_run_is_short_and_ends_with_what_to_fill_in(tmp_path):
    lines = run_checker(tmp_path)
    assert not any("= FAILURES =" in ln for ln in lines), "no traceback section when every failure is the stub's"
    assert sum("NotImplementedError" in ln for ln in lines) <= 6, "at most one line per failing test"
    assert lines[-1].startswith("day 01: not written yet -- fill in vector_add in "), lines[-3:]
    assert "test_day_01.py" in lines[-1] and "`pytest checkers/day_01`" in lines[-1]


def test_a_real_failure_keeps_its_traceback(tmp_path):
    lines = run_checker(tmp_path, "\n\ndef test_wrong():\n    assert 1 + 1 == 3, 'a real mistake'\n")
    assert any("= FAILURES =" in ln for ln in lines), "a failure that is not the stub's is shown in full"
    assert any("a real mistake" in ln for ln in lines)
    assert not any("not written yet -- fill in" in ln for ln in lines)


# ---- messages that point at the real bug (shared/course/testing.py) ---------------------------
def test_race_verdict_beats_the_overflow_advice():
    """A racy kernel overflows exp on some launches only: that is a race, not a missing max subtraction."""
    from shared.course.testing import check_kernel
    calls = iter([OverflowError("math range error"), torch.ones(3), OverflowError("math range error")])

    def racy():
        r = next(calls)
        if isinstance(r, Exception):
            raise r
        return r
    with pytest.raises(AssertionError, match=r"^nondeterministic: a missing barrier\?"):
        check_kernel(racy, torch.ones(3))

    def always_overflows():
        raise OverflowError("math range error")
    with pytest.raises(AssertionError, match=r"^math.exp overflowed: subtract the row max"):
        check_kernel(always_overflows, torch.ones(3))


def test_nan_messages_tell_unwritten_from_computed():
    from shared.course.testing import assert_close, check_kernel, poison_
    with pytest.raises(AssertionError, match=r"element \(1,\) was never written"):
        assert_close(torch.tensor([1.0, 0.0]).index_put_((torch.tensor([1]),), poison_(torch.empty(1))),
                     torch.ones(2))
    with pytest.raises(AssertionError, match=r"computed, not left unwritten: exp\(-inf - \(-inf\)\)"):
        check_kernel(lambda: torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 0.0]))   # PyTorch only

    def leaves_the_last_unwritten():
        out = torch.empty(3)                     # check_kernel hands out poisoned memory, as a GPU would
        out[:2] = 1.0
        return out
    with pytest.raises(AssertionError, match=r"element \(2,\) was never written"):
        check_kernel(leaves_the_last_unwritten, torch.ones(3))


def test_scan_ptx_leaves_out_numbas_fp16_operator_frame_but_not_a_float_array():
    """a + b on two float16 values calls cuda_fp16's operator+ through a few 16-bit local slots."""
    half_call = (".extern .func  (.param .b32 func_retval0) _ZplRK6__halfS1__nbst\n"
                 ".local .align 2 .b8 \t__local_depot0[6];\nst.local.u16 [%rd1], %rs1;\nld.local.u16 %rs4, [%rd1];\n")
    assert compile_check.scan_ptx(half_call) is None
    spill = half_call + "st.local.f32 [%rd2], %f1;\n"
    assert "local-memory stack frame" in compile_check.scan_ptx(spill)
    assert compile_check.scan_ptx(spill, local_allowed=True) is None
