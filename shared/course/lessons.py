"""Render lessons: MyST notebook sources in notes/ -> executed .ipynb and an offline .html page in
build/lessons (the page and the index: shared/course/site.py)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from shared import REPO
from shared.course import site, syllabus


def _kernel_config(ipc_dir: str):
    """The kernel talks over Unix sockets in a private folder (TCP would make ipykernel warn that
    its traffic is unencrypted on every render); Windows has no IPC transport and keeps TCP."""
    from traitlets.config import Config
    c = Config()
    if os.name != "nt":
        c.KernelManager.transport = "ipc"
        c.KernelManager.ip = os.path.join(ipc_dir, "kernel")
    return c


def run_cells(nb, timeout: int = 600) -> None:
    """Run every cell of `nb` in a fresh kernel, in the repository root."""
    from nbconvert.preprocessors import ExecutePreprocessor
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    with tempfile.TemporaryDirectory(prefix="tinyinfer-kernel-") as ipc:
        ExecutePreprocessor(timeout=timeout, kernel_name="python3", config=_kernel_config(ipc)).preprocess(
            nb, {"metadata": {"path": str(REPO)}})


def render(day: syllabus.Day, out: Path, execute: bool = True, timeout: int = 600) -> list[Path]:
    """day_NN.ipynb (executed unless told not to) and day_NN.html in `out`."""
    import jupytext
    import nbformat

    src = REPO / day.lesson
    if not src.exists():
        raise FileNotFoundError(f"lesson {day.lesson} is missing")
    nb = jupytext.read(src)
    if execute:
        run_cells(nb, timeout)
    nb.metadata["tinyinfer"] = {"executed": execute}
    out.mkdir(parents=True, exist_ok=True)
    ipynb = out / f"{day.tag}.ipynb"
    nbformat.write(nb, ipynb)
    return [ipynb, site.write_lesson(day, nb, out, executed=execute)]


def write_index(out: Path) -> Path:
    """The index, the stylesheet and every other lesson page (links, progress marks): see site.py."""
    return site.write_site(out)
