"""Render lessons: MyST notebook sources in notes/ -> executed .ipynb and .html in build/lessons."""
from __future__ import annotations

import os
from pathlib import Path

from shared import REPO
from shared.course import syllabus


def render(day: syllabus.Day, out: Path, execute: bool = True, timeout: int = 600) -> list[Path]:
    import jupytext
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor

    src = REPO / day.lesson
    if not src.exists():
        raise FileNotFoundError(f"lesson {day.lesson} is missing")
    nb = jupytext.read(src)
    if execute:
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(REPO)}})
    out.mkdir(parents=True, exist_ok=True)
    ipynb, html = out / f"{day.tag}.ipynb", out / f"{day.tag}.html"
    nbformat.write(nb, ipynb)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html.write_text(body)
    return [ipynb, html]


def write_index(out: Path) -> Path:
    rows = []
    for d in syllabus.days():
        link = f'<a href="{d.tag}.html">{d.title}</a>' if (out / f"{d.tag}.html").exists() else d.title
        rows.append(f"<tr><td>{d.number:02d}</td><td>{link}</td><td>{'' if d.published else 'coming'}</td></tr>")
    index = out / "index.html"
    out.mkdir(parents=True, exist_ok=True)
    index.write_text("<html><head><meta charset='utf-8'><title>tinyinfer lessons</title></head><body>"
                     "<h1>tinyinfer: 60 days</h1><table>" + "".join(rows) + "</table></body></html>")
    return index
