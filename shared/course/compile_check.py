"""Compile every kernel a checker launches in the simulator for real GPUs (sm_75 and sm_90).

Why: the simulator runs a kernel as Python, so it accepts kernels that no GPU compiler would (a
shared array sized with `cuda.blockDim.x`, a Python object in a kernel, a type error on a path
the test never takes). numba-cuda types and lowers a kernel without a GPU; with the NVVM wheels
(`pip install -e .[cu13]` or `[cu12]`) it also produces PTX.

How: the numba that runs the simulator cannot compile (NUMBA_ENABLE_CUDASIM=1 replaces
numba.cuda in that process), so `install()` (pytest plugin, sim tier) wraps the simulator's
launch: the first launch of a kernel from `days.` or `solutions.` with a given pattern of
argument types sends a recipe (module, name, closure values, argument types) to one child
process per pytest process that imports the same module with the simulator off and calls
`numba.cuda.compile_ptx`. A kernel that does not compile fails the launch with one line naming
the kernel and the compiler's complaint. Where PTX comes back, it is also scanned for what the
lessons forbid: fp64 arithmetic in a kernel without fp64 arrays, and a local-memory stack frame
(`__local_depot`: a local array indexed at run time, or one too big for registers), leaving out
what the learner did not write (libdevice's trig reduction, numba's fp16 operator calls) and
local arrays a lesson asks for (a module setting LOCAL_MEMORY_BY_DESIGN = True). Register
spills are decided later, by ptxas: only the GPU tier's compute-sanitizer/`-m gpu` runs see them.

Results are cached in .tinyinfer/compile/ by a hash of the kernel's recipe, the source files it
comes from and the toolchain, so a rerun pays nothing for kernels that did not change.
Limits: a kernel whose closure holds something other than numbers, strings, tuples, modules,
numba types and jitted functions is not checked (the launch runs as before); neither is a
launch through anything but the simulator's `kernel[grid, block](...)`.
TINYINFER_COMPILE_CHECK=0 turns the check off.
"""
from __future__ import annotations

import functools
import hashlib
import json
import linecache
import marshal
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import types as pytypes
from pathlib import Path

from shared import REPO

ARCHS = ((7, 5), (9, 0))          # a T4 / RTX 20xx (the oldest GPU the course supports) and an H100/H200
PACKAGES = ("days.", "solutions.")
CACHE = Path(os.environ.get("TINYINFER_COMPILE_CACHE", REPO / ".tinyinfer" / "compile"))
ENABLED = os.environ.get("TINYINFER_COMPILE_CHECK", "1") != "0"


class CompileError(AssertionError):
    """A kernel the simulator ran but a GPU compiler refuses (or compiles into what a lesson forbids)."""


class Unsupported(Exception):
    """A kernel this check cannot rebuild in the child process (it is then not checked)."""


# ---- parent side: the simulator's process -----------------------------------------------------
_memo: dict = {}      # (python function, argument types) -> None (fine) or the one-line complaint
_server = None


def install() -> None:
    """Wrap the simulator's kernel launch (idempotent). Call only in the sim tier."""
    if not ENABLED:
        return
    from numba.cuda.simulator import kernel as sim
    if getattr(sim.FakeCUDAKernel, "_tinyinfer_compile_checked", False):
        return
    plain = sim.FakeCUDAKernel.__call__

    def __call__(self, *args):
        if not self._device and sim._get_kernel_context() is None:
            check_launch(self, args)
        return plain(self, *args)

    sim.FakeCUDAKernel.__call__ = __call__
    sim.FakeCUDAKernel._tinyinfer_compile_checked = True


def check_launch(kernel, args) -> None:
    """Raise CompileError if `kernel` launched with `args` would not compile for a GPU."""
    fn = kernel.fn
    if not getattr(fn, "__module__", "").startswith(PACKAGES):
        return
    try:
        argtypes = tuple(_argtype(a) for a in args)
    except Unsupported:
        return
    key = (fn, argtypes)
    if key not in _memo:
        _memo[key] = _compile(kernel, argtypes)
    if _memo[key]:
        raise CompileError(_memo[key])


def _argtype(a):
    """How numba types this argument on a GPU, as plain data: ('array', dtype, ndim, layout) or ('scalar', name)."""
    import numpy as np
    ary = getattr(a, "_ary", a)          # the simulator's FakeCUDAArray wraps a numpy array
    if isinstance(ary, np.ndarray):
        flags = ary.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        return ("array", str(ary.dtype), ary.ndim, layout)
    if isinstance(a, bool):
        return ("scalar", "boolean")
    if isinstance(a, int):
        return ("scalar", "int64")
    if isinstance(a, float):
        return ("scalar", "float64")
    if isinstance(a, np.generic):
        return ("scalar", str(a.dtype) if a.dtype != np.bool_ else "boolean")
    raise Unsupported(type(a).__name__)


def _compile(kernel, argtypes) -> str | None:
    """The complaint for this kernel and argument types, from the disk cache or the child."""
    try:
        recipe, files = _recipe_of(kernel)
    except Unsupported:
        return None
    key = _cache_key(recipe, files, argtypes)
    path = CACHE / f"{key}.json"
    try:
        return json.loads(path.read_text())["complaint"]
    except (OSError, ValueError, KeyError):
        pass
    reply = _ask(("compile", recipe, argtypes, _name(kernel.fn)))
    if reply.get("note") and os.environ.get("TINYINFER_COMPILE_DEBUG"):
        print(f"compile check, {_name(kernel.fn)}: {reply['note']}", file=sys.stderr)
    if reply.get("cache", True):
        try:
            CACHE.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"complaint": reply["complaint"], "kernel": _name(kernel.fn),
                                       "how": reply.get("note", "")}))
            os.replace(tmp, path)
        except OSError:
            pass
    return reply["complaint"]


def _name(fn) -> str:
    return f"{fn.__module__}.{fn.__name__}"


def _recipe_of(kernel):
    """(recipe, source files): what the child needs to rebuild the kernel with the real numba."""
    files: set[str] = set()
    return _value(kernel, files, set()), sorted(files)


def _value(v, files: set, seen: set):
    """A closure value as plain data the child can turn back into the real thing."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel
    if isinstance(v, (bool, int, float, str, bytes, type(None))):
        return ("value", v)
    if isinstance(v, tuple):
        return ("tuple", tuple(_value(x, files, seen) for x in v))
    if isinstance(v, pytypes.ModuleType):
        return ("module", v.__name__)
    fn = v.fn if isinstance(v, FakeCUDAKernel) else v
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is not None:
        name = next((k for k, x in vars(module).items() if x is v), None)
        if name is not None:                         # a module attribute: the child imports it
            _note_sources(fn, module, files, seen)
            return ("attr", module.__name__, name)
    if isinstance(v, FakeCUDAKernel) and module is not None:
        _note_sources(fn, module, files, seen)       # made by a factory: rebuild it from its code
        cells = tuple((n, _value(c.cell_contents, files, seen))
                      for n, c in zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        return ("closure", module.__name__, fn.__qualname__, marshal.dumps(fn.__code__), fn.__defaults__, cells,
                bool(v._device), bool(v._fastmath))
    try:
        return ("pickle", pickle.dumps(v))           # numba types, numpy scalars
    except Exception:
        raise Unsupported(type(v).__name__) from None


def _note_sources(fn, module, files: set, seen: set) -> None:
    """Add the source files a function's compiled code depends on (its module, and the modules of
    the jitted functions it names) to `files`, for the cache key."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel
    if id(fn) in seen or not hasattr(fn, "__code__"):
        return
    seen.add(id(fn))
    if getattr(module, "__file__", None):
        files.add(module.__file__)
    names = set(fn.__code__.co_names) | set(fn.__code__.co_freevars)
    for n in names:
        g = getattr(fn, "__globals__", {}).get(n)
        if isinstance(g, pytypes.ModuleType):
            if getattr(g, "__file__", "") and str(REPO) in g.__file__:
                files.add(g.__file__)
        elif isinstance(g, FakeCUDAKernel):
            _note_sources(g.fn, sys.modules.get(g.fn.__module__), files, seen)
        elif getattr(g, "__module__", None) and g.__module__.startswith(("days.", "solutions.", "shared.")):
            m = sys.modules.get(g.__module__)
            if m is not None and getattr(m, "__file__", None):
                files.add(m.__file__)


def has_nvvm() -> bool:
    """Whether an NVVM wheel is installed (then the child makes PTX; else it types and lowers only)."""
    return any(p.startswith(("nvidia-nvvm", "nvidia-cuda-nvcc")) for p in _toolchain().split(";"))


@functools.lru_cache(maxsize=None)
def _toolchain() -> str:
    """numba-cuda's version and which NVVM wheels are installed: a change recompiles everything."""
    from importlib import metadata
    parts = []
    for dist in ("numba-cuda", "nvidia-nvvm", "nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvcc", "nvidia-cuda-nvrtc",
                 "nvidia-cuda-nvrtc-cu12"):
        try:
            parts.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ";".join(parts) + f";CUDA_HOME={os.environ.get('CUDA_HOME', '')}"


def _without_code(v):
    """A recipe without its code objects (they hold file paths: a mutant's temp copy would never hit)."""
    if v[0] == "closure":
        return v[:3] + tuple(_without_code(c) for _, c in v[5]) + v[6:]
    if v[0] == "tuple":
        return ("tuple",) + tuple(_without_code(x) for x in v[1])
    return v


@functools.lru_cache(maxsize=None)
def _own_source() -> bytes:
    return Path(__file__).read_bytes()


def _cache_key(recipe, files, argtypes) -> str:
    """The recipe's names and values, the argument types, the toolchain and the sources' contents."""
    h = hashlib.sha256(pickle.dumps((_without_code(recipe), argtypes, ARCHS, _toolchain(),
                                     _own_source())))
    for f in files:
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            h.update(f.encode())
    return h.hexdigest()[:32]


def _ask(request) -> dict:
    """Send one request to the child process (started on first use) and return its reply."""
    global _server
    if _server is None or _server.poll() is not None:
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", TINYINFER_TIER="",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))   # the modules the parent can import
        # the parent's cwd and import path, so the child imports the same files (a mutant's copy too)
        _server = subprocess.Popen([sys.executable, "-m", "shared.course.compile_check"], cwd=os.getcwd(),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                   stderr=None if os.environ.get("TINYINFER_COMPILE_DEBUG") else subprocess.DEVNULL)
    try:
        _send(_server.stdin, request)
        return _receive(_server.stdout)
    except (OSError, EOFError, struct.error) as e:
        _server = None
        return {"complaint": None, "cache": False, "note": f"compile check unavailable: {e}"}


def stop() -> None:
    """End the child process (it also ends by itself when this process exits)."""
    global _server
    if _server is not None:
        try:
            _server.stdin.close()
            _server.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            _server.kill()
        _server = None


def _send(stream, obj) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the compile check's child process ended")
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(n))


# ---- child side: the real numba-cuda, no simulator -------------------------------------------
def _serve() -> None:
    """Answer compile requests on stdin until it closes."""
    from shared.runtime import tier
    tier.detect = lambda: "gpu"                      # the launch path's GPU branch, without a GPU
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr                          # stray prints must not corrupt the replies
    while True:
        try:
            request = _receive(inp)
        except EOFError:
            return
        _, recipe, argtypes, name = request
        start = time.perf_counter()
        try:
            reply = {"complaint": compile_kernel(recipe, argtypes, name),
                     "note": f"{'PTX' if _PTX[0] else 'typed only (no NVVM)'}, {time.perf_counter() - start:.2f} s"}
        except Unsupported:
            reply = {"complaint": None}
        except Exception as e:                        # the check itself broke: don't blame the learner
            reply = {"complaint": None, "cache": False, "note": f"{type(e).__name__}: {e}"}
        _send(out, reply)


def _rebuild(v):
    """The inverse of `_value`, in the child."""
    import importlib
    kind = v[0]
    if kind == "value":
        return v[1]
    if kind == "tuple":
        return tuple(_rebuild(x) for x in v[1])
    if kind == "module":
        return importlib.import_module(v[1])
    if kind == "attr":
        return getattr(importlib.import_module(v[1]), v[2])
    if kind == "pickle":
        return pickle.loads(v[1])
    if kind == "closure":
        _, module, _, code, defaults, cells, device, fastmath = v
        from numba import cuda
        code = marshal.loads(code)
        closure = tuple(pytypes.CellType(_rebuild(c)) for _, c in cells) or None
        fn = pytypes.FunctionType(code, vars(importlib.import_module(module)), code.co_name, defaults, closure)
        return cuda.jit(device=device, fastmath=fastmath)(fn)
    raise Unsupported(kind)


def _numba_type(t):
    import numpy as np
    from numba.core import types
    from numba.np.numpy_support import from_dtype
    if t[0] == "array":
        return types.Array(from_dtype(np.dtype(t[1])), t[2], t[3])
    return getattr(types, t[1])


_PTX = [True]   # whether the child produced PTX (False: NVVM missing, typing and lowering only)


class _NoGPU:
    """Stands in for numba's current device in the child: device functions ask it for the arch."""
    compute_capability = ARCHS[0]


def _without_a_gpu() -> None:
    """numba compiles a device function for the current device's arch: answer the arch being compiled."""
    import numba.cuda.dispatcher as dispatcher
    dispatcher.get_current_device = lambda: _NoGPU


def compile_kernel(recipe, argtypes, name: str) -> str | None:
    """None if the kernel compiles for every arch in ARCHS (and its PTX is clean), else one line."""
    from numba import cuda
    _without_a_gpu()
    kernel = _rebuild(recipe)
    fn = getattr(kernel, "py_func", kernel)
    fastmath = bool(getattr(kernel, "targetoptions", {}).get("fastmath", False))
    sig = tuple(_numba_type(t) for t in argtypes)
    has_fp64_arrays = any(t[0] == "array" and t[1] == "float64" for t in argtypes)
    local_allowed = getattr(sys.modules.get(fn.__module__), LOCAL_BY_DESIGN, False) is True
    for cc in ARCHS:
        arch = f"sm_{cc[0]}{cc[1]}"
        _NoGPU.compute_capability = cc
        try:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc, fastmath=fastmath)
        except Exception as e:
            if _no_toolchain(e):
                _PTX[0] = False
                return None                          # typed and lowered; no NVVM here for PTX
            return f"{name} does not compile for a GPU ({arch}): {_summary(e, fn)}"
        problem = scan_ptx(ptx, fp64_allowed=has_fp64_arrays, local_allowed=local_allowed)
        if problem:
            return f"{name} on {arch}: {problem}"
    return None


def _no_toolchain(e: Exception) -> bool:
    """The error numba-cuda raises after typing and lowering, when NVVM/NVRTC libraries are missing."""
    text = f"{type(e).__module__}.{type(e).__name__}: {e}"
    return ("pathfinder" in text or "DynamicLibNotFound" in text or "NvvmSupportError" in text
            or "libnvvm" in text.lower() or "libNVVM cannot be found" in text)


def _locate(fn, text: str) -> tuple[str, int] | None:
    """Where in the kernel the function numba could not type is called (numba-cuda 0.30 drops the
    location of some typing errors): the first source line that calls it."""
    import inspect
    callee = re.search(r"Function\(<function ([\w.]+) at", text)
    if fn is None or callee is None:
        return None
    try:
        lines, start = inspect.getsourcelines(fn)
        path = inspect.getsourcefile(fn)
    except (OSError, TypeError):
        return None
    for i, line in enumerate(lines):
        if callee.group(1) + "(" in line:
            return path, start + i
    return None


def _summary(e: Exception, fn=None) -> str:
    """numba's multi-line error as one line: the complaint, the call it typed, where, and a hint."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if not ln.startswith(("During:", "File", "<source"))), type(e).__name__)
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    call = next((ln[3:].strip() for ln in lines if ln.startswith(">>>")), "")
    where = re.findall(r'File "([^"]+)", line (\d+)', text) or [_locate(fn, text)]
    where = [w for w in where if w]
    parts = [re.sub(r"Function\(<function (\S+) at 0x[0-9a-f]+>\)", r"\1", first).rstrip(":")]
    if call:
        parts.append(f"`{call}`")
    if where:
        path, line = where[-1]
        src = linecache.getline(path, int(line)).strip()
        try:
            path = os.path.relpath(path, REPO)
        except ValueError:
            pass
        parts.append(f"at {path}:{line}" + (f" `{src}`" if src else ""))
    hint = ""
    if re.search(r"shared\.array|local\.array", text):
        hint = (" -- a shared or local array's shape must be a compile-time constant (a module constant or "
                "a closure variable of a kernel factory), not cuda.blockDim.x or an argument")
    elif "Untyped global name" in text or "Unknown attribute" in text or "pyobject" in text.lower():
        hint = " -- kernels can use only numbers, arrays and numba's cuda/math functions, not Python objects"
    return " ".join(parts) + hint


_F64_MATH = re.compile(r"^\s*(?:@%?\w+\s+)?(add|sub|mul|fma|div|rcp|sqrt|rsqrt|ex2|lg2|sin|cos|min|max|neg|abs|"
                       r"setp\.\w+|cvt(?:\.\w+)?\.f64\.f32)[.\w]*?\.f64\b", re.M)
_DEPOT = re.compile(r"\.local\s+\.align\s+\d+\s+\.b8\s+__local_depot\d+\[(\d+)\]")
# libdevice's sinf/cosf (math.sin, math.cos on float32) reduce an argument beyond ~1e5 with
# Payne-Hanek: seven 32-bit words in a 28-byte local array and one fp64 multiply by 2^-64 * pi/2.
# That slow path is the library's, taken only for huge angles, and HF's fp32 trig does the same:
# neither is the learner's mistake, so the scan leaves it out.
_TRIG_REDUCTION = "0d3BF921FB54442D19"
_TRIG_DEPOT_BYTES = 28
# numba-cuda lowers fp16 arithmetic (a + b on two float16 values) to calls of cuda_fp16's C++
# operators, linked in later, whose arguments go by reference through a few bytes of local memory.
# That frame is numba's, not the learner's: the scan leaves it out when every local access is one
# 16-bit value and the module calls such an operator.
_HALF_OPERATOR = re.compile(r"\.extern\s+\.func\b.*6__half")
_LOCAL_ACCESS = re.compile(r"\b(?:ld|st)\.local\.(\w+)")
# A lesson may put arrays in local memory on purpose (day 25's one-thread-per-row flash kernel keeps
# its output row there; day 26 moves it to registers): its module says so with this name = True.
LOCAL_BY_DESIGN = "LOCAL_MEMORY_BY_DESIGN"


def scan_ptx(ptx: str, fp64_allowed: bool = False, local_allowed: bool = False) -> str | None:
    """What the lessons forbid, as seen in PTX: fp64 arithmetic in an fp32 kernel, a local-memory frame."""
    if not fp64_allowed:
        ops = [m.group(0).split()[-1] for m in _F64_MATH.finditer(ptx)
               if _TRIG_REDUCTION not in ptx[m.start():ptx.find("\n", m.start())]]
        if ops:
            return (f"{len(ops)} fp64 instructions (first `{ops[0]}`) in a kernel without float64 arrays: a Python "
                    "float (0.0, math.inf, a float argument) makes numba compute in float64, 32x slower on most "
                    "GPUs -- wrap constants and float arguments in float32(...)")
    depot = _DEPOT.search(ptx)
    if depot and _TRIG_REDUCTION in ptx and int(depot.group(1)) <= _TRIG_DEPOT_BYTES:
        depot = None                      # only libdevice's trig reduction array (see _TRIG_REDUCTION)
    if depot and _HALF_OPERATOR.search(ptx) and all(
            kind in ("u16", "b16", "f16") for kind in _LOCAL_ACCESS.findall(ptx)):
        depot = None                      # only numba's fp16 operator calls (see _HALF_OPERATOR)
    if local_allowed:
        depot = None
    if depot:
        return (f"a {depot.group(1)}-byte local-memory stack frame: a cuda.local.array indexed with a value known "
                "only at run time (or too big for registers) lives in slow local memory -- index it with "
                "loop counters of loops numba can unroll, or keep the values in scalars")
    return None


if __name__ == "__main__":
    _serve()
