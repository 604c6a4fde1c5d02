"""The course site in build/lessons: an index by phase with the learner's progress, and one page per
published lesson with previous/next links. It works offline: math is turned into MathML when the
page is written (latex2mathml; browsers lay MathML out themselves), code is highlighted by
pygments, plots are inlined as data: URLs and the one stylesheet sits beside the pages. Nothing is
fetched from the network, so a page looks the same on a plane as on GitHub Pages.

Every lesson page is rebuilt from its stored notebook (day_NN.ipynb, written by `tinyinfer render`)
or, when there is none yet, from notes/ without outputs: so the links always resolve, and the
progress marks are as fresh as the last `tinyinfer render` (`tinyinfer render --index` redoes only
this part, in seconds).
"""
from __future__ import annotations

import base64
import html
import re
import sys
from pathlib import Path

from shared import REPO
from shared.course import progress, syllabus

GENERATOR = "tinyinfer-site 1"
STYLESHEET = Path(__file__).with_name("site.css")

# ---- math -------------------------------------------------------------------------------------
# One pass over a markdown cell: code is skipped, math is cut out and replaced by a placeholder the
# markdown renderer leaves alone, then the placeholders become MathML in the HTML.
_TOKENS = re.compile(r"""
    (?P<fence>^[ \t]*(?P<f>```+|~~~+).*?^[ \t]*(?P=f)[ \t]*$)   # fenced code block
  | (?P<code>(?P<ticks>`+).+?(?P=ticks))                        # code span
  | \\\$                                                        # an escaped dollar stays text
  | \$\$(?P<display>.+?)(?<!\\)\$\$                              # display math
  | (?<![$\\])\$(?P<inline>.+?)(?<![$\\])\$                       # inline math
""", re.S | re.M | re.X)   # the math delimiters are nbconvert's (what Jupyter and the old pages used)
_PLACEHOLDER = re.compile("\u27e6(\\d+)\u27e7")
_FIXES = ((r"\arg", r"\operatorname{arg}"),)       # TeX that latex2mathml misreads
# delimiters it leaves as TeX after \big, \Big, ...: their characters
_DELIMITERS = {"lceil": "\u2308", "rceil": "\u2309", "lfloor": "\u230a", "rfloor": "\u230b",
               "langle": "\u27e8", "rangle": "\u27e9", "vert": "|", "Vert": "\u2016", "{": "{", "}": "}"}


def mathml(tex: str, display: bool) -> str:
    """One TeX formula as a <math> element; a formula it cannot convert stays visible as TeX."""
    try:
        from latex2mathml.converter import convert
    except ImportError:   # a venv from before the site needed it
        _warn_once("latex2mathml is not installed, so math shows as TeX: pip install -e .")
        return f'<code class="tex-error">{html.escape(tex)}</code>'
    for bad, good in _FIXES:
        tex = tex.replace(bad, good)
    try:
        out = convert(tex.strip(), display="block" if display else "inline")
    except Exception:  # noqa: BLE001 -- the converter raises many kinds; the page must still build
        return f'<code class="tex-error" title="this formula could not be converted">{html.escape(tex)}</code>'
    out = out.replace("\\_", "_").replace('width="negativethinmathspace"', 'width="-0.1667em"')
    out = re.sub(r">\\(\w+|[{}])<", lambda m: f">{_DELIMITERS.get(m.group(1), m.group(0)[1:-1])}<", out)
    return out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "")   # HTML needs no namespace


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def markdown(text: str) -> str:
    """Markdown (with $inline$ and $$display$$ math) -> HTML with MathML."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    formulas: list[str] = []

    def cut(m: re.Match) -> str:
        if m.group("display") is not None or m.group("inline") is not None:
            display = m.group("display") is not None
            formulas.append(mathml(m.group("display") if display else m.group("inline"), display))
            return f"\u27e6{len(formulas) - 1}\u27e7"
        return m.group(0)

    body = markdown2html_mistune(_TOKENS.sub(cut, text))
    return _PLACEHOLDER.sub(lambda m: formulas[int(m.group(1))], body)


# ---- notebook cells ---------------------------------------------------------------------------
def _highlight(source: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return highlight(source, PythonLexer(), HtmlFormatter())


def _text(s: str | list) -> str:
    """Output text as a terminal would show it: ANSI colours gone, a \\r-redrawn line at its last state."""
    from nbconvert.filters import strip_ansi
    s = strip_ansi("".join(s) if isinstance(s, list) else s).replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in s.split("\n"))


def _output(out: dict) -> str:
    kind = out.get("output_type")
    if kind == "stream":
        return f'<pre class="{html.escape(out.get("name", "stdout"))}">{html.escape(_text(out.get("text", "")))}</pre>'
    if kind == "error":
        return f'<pre class="error">{html.escape(_text(chr(10).join(out.get("traceback", []))))}</pre>'
    data = out.get("data", {})
    for mime in ("image/svg+xml", "image/png", "image/jpeg"):
        if mime in data:
            raw = data[mime]
            raw = "".join(raw) if isinstance(raw, list) else raw
            b64 = base64.b64encode(raw.encode()).decode() if mime == "image/svg+xml" else raw.replace("\n", "")
            return f'<img alt="figure" src="data:{mime};base64,{b64}">'
    if "text/html" in data:
        return "".join(data["text/html"])
    if "text/markdown" in data:
        return markdown("".join(data["text/markdown"]))
    if "text/latex" in data:
        return markdown("".join(data["text/latex"]))
    if "text/plain" in data:
        return f"<pre>{html.escape(_text(data['text/plain']))}</pre>"
    return ""


def _cell(cell) -> str:
    if cell.cell_type == "markdown":
        return markdown(cell.source)
    if cell.cell_type != "code":
        return ""
    outputs = "".join(_output(o) for o in cell.get("outputs", []))
    return (f'<div class="cell"><div class="source">{_highlight(cell.source)}</div>'
            + (f'<div class="output">{outputs}</div>' if outputs else "") + "</div>")


# ---- progress and pages -----------------------------------------------------------------------
def marks() -> dict[int, tuple[str, str]]:
    """{day number: (css class, label)} from .tinyinfer/progress.json (the days track)."""
    done, stale = progress.load(), progress.stale_days()
    out = {}
    for d in syllabus.days():
        rec = done.get(d.tag)
        if not d.published:
            out[d.number] = ("coming", "coming")
        elif rec and d.number in stale:
            out[d.number] = ("changed", "changed")
        elif rec:
            out[d.number] = ("done", "done (" + "+".join(rec.get("tiers", [rec.get("tier", "?")])) + ")")
        else:
            out[d.number] = ("todo", "todo")
    return out


def _mark(cls_label: tuple[str, str]) -> str:
    cls, label = cls_label
    return f'<span class="mark {cls}">{html.escape(label)}</span>'


def _page(title: str, header: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta name="generator" content="{GENERATOR}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="stylesheet" href="site.css"></head>\n'
            f'<body><header class="site"><a class="home" href="index.html">tinyinfer</a>{header}</header>\n'
            f"{body}\n</body></html>\n")


def lesson_days() -> list[syllabus.Day]:
    """The published days whose lesson exists (all of them, once a day is finished being written)."""
    return [d for d in syllabus.published() if (REPO / d.lesson).exists()]


def _pager(day: syllabus.Day) -> str:
    pub = lesson_days()
    i = pub.index(day)
    links = []
    if i > 0:
        p = pub[i - 1]
        links.append(f'<a class="prev" rel="prev" href="{p.tag}.html">&larr; Day {p.number:02d}: {html.escape(p.title)}</a>')
    if i + 1 < len(pub):
        n = pub[i + 1]
        links.append(f'<a class="next" rel="next" href="{n.tag}.html">Day {n.number:02d}: {html.escape(n.title)} &rarr;</a>')
    return f'<nav class="pager">{"".join(links)}</nav>'


def lesson_page(day: syllabus.Day, nb, executed: bool, mark: tuple[str, str] | None = None) -> str:
    phase = syllabus.phases()[day.phase]
    header = (f'<span class="crumb">Phase {day.phase}: {html.escape(phase)}</span>'
              f'<span class="crumb">Day {day.number:02d} of {len(syllabus.days())}</span>'
              + _mark(mark or marks()[day.number]))
    note = "" if executed else (
        f'<p class="note">This page shows the lesson without running it: <code>tinyinfer render {day.number}</code> '
        "runs its code and adds the outputs (plots, timings, checks).</p>")
    cells = "\n".join(_cell(c) for c in nb.cells)
    footer = (f'<footer class="site">Your code: <code>days/{day.tag}/</code> &middot; check it: '
              f'<code>pytest checkers/{day.tag}</code> &middot; stuck? <code>tinyinfer hint {day.number}</code></footer>')
    body = f"{_pager(day)}<main>{note}{cells}</main>{_pager(day)}{footer}"
    return _page(f"Day {day.number:02d}: {day.title} -- tinyinfer", header, body)


def write_lesson(day: syllabus.Day, nb, out: Path, executed: bool, mark: tuple[str, str] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{day.tag}.html"
    path.write_text(lesson_page(day, nb, executed, mark), encoding="utf-8")
    return path


def index_page(out: Path, days_marks: dict[int, tuple[str, str]]) -> str:
    pub = syllabus.published()
    done = sum(1 for d in pub if days_marks[d.number][0] == "done")
    pct = 100 * done // max(1, len(pub))
    nxt = next((d for d in lesson_days() if days_marks[d.number][0] != "done"), None)
    parts = [f"<main><h1>Build an LLM inference engine in 60 days</h1>",
             f'<p>You have finished <strong>{done} of the {len(pub)} published days</strong> '
             f'(from <code>.tinyinfer/progress.json</code>; a day counts once its checker passes on the days track).</p>',
             f'<div class="bar" title="{pct}%"><span style="width: {pct}%"></span></div>']
    if nxt:
        parts.append(f'<p>Next: <a href="{nxt.tag}.html">Day {nxt.number:02d}: {html.escape(nxt.title)}</a></p>')
    parts += [f'<p class="note">{html.escape(w)}</p>' for w in progress.problems()]
    phases = syllabus.phases()
    for number, title in phases.items():
        rows = []
        for d in (d for d in syllabus.days() if d.phase == number):
            title_html = html.escape(d.title)
            if (out / f"{d.tag}.html").exists():
                title_html = f'<a href="{d.tag}.html">{title_html}</a>'
            provides = ", ".join(d.provides)
            rows.append(f'<tr class="{days_marks[d.number][0]}"><td class="n">{d.number:02d}</td>'
                        f'<td>{title_html}' + (f'<div class="provides">{html.escape(provides)}</div>' if provides else "")
                        + f'</td><td class="m">{_mark(days_marks[d.number])}</td></tr>')
        parts.append(f'<h2 id="phase-{number}">Phase {number}: {html.escape(title)}</h2>'
                     f'<table class="days">{"".join(rows)}</table>')
    parts.append("</main>")
    footer = ('<footer class="site">Run <code>tinyinfer render</code> to execute every lesson, '
              '<code>tinyinfer render --index</code> to refresh this page and the progress marks.</footer>')
    return _page("tinyinfer: 60 days", '<span class="crumb">60 days</span>', "".join(parts) + footer)


def _stored_notebook(day: syllabus.Day, out: Path):
    """(notebook, executed): the one `tinyinfer render` stored, else the lesson source without outputs."""
    import jupytext
    import nbformat
    ipynb = out / f"{day.tag}.ipynb"
    if ipynb.exists():
        nb = nbformat.read(ipynb, as_version=4)
        ran = nb.metadata.get("tinyinfer", {}).get("executed")
        if ran is None:   # stored before pages recorded it: outputs mean it ran
            ran = any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
        return nb, bool(ran)
    return jupytext.read(REPO / day.lesson), False


def write_site(out: Path) -> Path:
    """The stylesheet, every published lesson page (from its stored notebook or its source) and the
    index, all with the progress recorded now. Returns the index's path."""
    from pygments.formatters import HtmlFormatter
    out.mkdir(parents=True, exist_ok=True)
    (out / "site.css").write_text(STYLESHEET.read_text() + "\n/* pygments */\n"
                                  + HtmlFormatter().get_style_defs(".highlight") + "\n")
    days_marks = marks()
    for d in lesson_days():
        nb, executed = _stored_notebook(d, out)
        write_lesson(d, nb, out, executed, days_marks[d.number])
    index = out / "index.html"
    index.write_text(index_page(out, days_marks), encoding="utf-8")
    return index
