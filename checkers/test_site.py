"""The course site (`tinyinfer render`, shared/course/site.py) works offline: nothing is fetched from
the network, math is rendered markup (MathML), every link resolves to a file, each lesson links to
the previous and next published day, and the learner's progress shows.

The site is built from the lesson sources (no execution: seconds) plus one stored notebook with
outputs, as `tinyinfer render` leaves it. The browser test opens a page in headless Chromium and
checks the layout; it is skipped where no browser is installed (e.g. CI).
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import jupytext
import nbformat
import pytest

from shared import REPO
from shared.course import lessons, progress, site, syllabus

PUBLISHED = [d for d in syllabus.published() if (REPO / d.lesson).exists()]   # test_curriculum: all of them
PNG_1x1 = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f4e0"
    "640000000049454e44ae426082")).decode()


class Page(HTMLParser):
    """Every URL a page refers to (with the tag and attribute), and its text outside code and math."""

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.links: list[tuple[str, str]] = []       # (href, rel) of <a>
        self.text: list[str] = []
        self.math = 0
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in ("src", "href", "data", "poster", "action"):
            if a.get(attr):
                self.urls.append((tag, attr, a[attr]))
        if tag == "a" and a.get("href"):
            self.links.append((a["href"], a.get("rel") or ""))
        if tag == "math":
            self.math += 1
        if tag in ("code", "pre", "math", "script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("code", "pre", "math", "script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A site as a learner has it: day 01 finished, day 02 finished but edited since, day 04
    rendered (a stored notebook with outputs), every other page from its source."""
    out = tmp_path_factory.mktemp("site")
    prog = out.parent / "progress.json"
    prog.write_text(json.dumps({"version": 1, "days": {
        "day_01": {"tier": "sim", "tiers": ["sim"], "passed": 3, "skipped": 0, "files": progress.digest(1)},
        "day_02": {"tier": "sim", "tiers": ["sim"], "passed": 3, "skipped": 0, "files": "0" * 64}}}))
    mp = pytest.MonkeyPatch()
    mp.setenv("TINYINFER_PROGRESS", str(prog))
    rendered = PUBLISHED[3]
    nb = jupytext.read(REPO / rendered.lesson)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="tier: sim\r\n\x1b[31mred\x1b[0m\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": PNG_1x1, "text/plain": "<Figure>"})]
    nb.metadata["tinyinfer"] = {"executed": True}
    nbformat.write(nb, out / f"{rendered.tag}.ipynb")
    index = lessons.write_index(out)
    yield SimpleSite(out, index, rendered)
    mp.undo()


class SimpleSite:
    def __init__(self, out, index, rendered):
        self.out, self.index, self.rendered = out, index, rendered


def pages(built) -> list[Path]:
    return sorted(built.out.glob("*.html"))


def test_every_published_lesson_has_a_page_and_the_index_links_them(built):
    names = {p.name for p in pages(built)}
    assert {f"{d.tag}.html" for d in PUBLISHED} | {"index.html"} == names
    linked = {href for href, _ in parse(built.index).links}
    assert {f"{d.tag}.html" for d in PUBLISHED} <= linked


def test_nothing_is_fetched_from_the_network(built):
    for path in pages(built) + [built.out / "site.css"]:
        text = path.read_text(encoding="utf-8")
        assert "@import" not in text and not re.search(r"url\(\s*['\"]?(https?:)?//", text), path.name
        if path.suffix != ".html":
            continue
        for tag, attr, url in parse(path).urls:
            if tag == "a":
                continue      # a link the reader may follow is not a resource the page loads
            assert not re.match(r"(https?:)?//", url), f"{path.name}: <{tag} {attr}={url}> loads from the network"
        assert "mathjax" not in text.lower() and "cdn" not in text.lower(), path.name


def test_local_links_resolve(built):
    for path in pages(built):
        for href, _ in parse(path).links:
            if re.match(r"[a-z]+:", href) or href.startswith("#"):
                continue
            target = (built.out / href.split("#")[0]).resolve()
            assert target.is_file(), f"{path.name}: link {href} goes nowhere"
    assert (built.out / "site.css").is_file()


def test_previous_and_next_follow_the_published_days(built):
    for i, d in enumerate(PUBLISHED):
        rels = {}
        for href, rel in parse(built.out / f"{d.tag}.html").links:
            rels.setdefault(rel, set()).add(href)
        want_prev = {f"{PUBLISHED[i - 1].tag}.html"} if i > 0 else None
        want_next = {f"{PUBLISHED[i + 1].tag}.html"} if i + 1 < len(PUBLISHED) else None
        assert rels.get("prev") == want_prev and rels.get("next") == want_next, (d.tag, rels)
        assert "index.html" in rels.get("", set())


def test_math_is_rendered_markup(built):
    """Every lesson with math in its source has <math> elements and no TeX left in its text."""
    for d in PUBLISHED:
        source = re.sub(r"```.*?```|`[^`\n]*`", "", (REPO / d.lesson).read_text(), flags=re.S)
        page = parse(built.out / f"{d.tag}.html")
        text = "".join(page.text)
        if "$" in source:
            assert page.math > 0, f"{d.tag}: math in the lesson, none on the page"
        assert not re.search(r"\$[^$\n]*\\[a-zA-Z]+", text), f"{d.tag}: raw TeX on the page"
        html_text = (built.out / f"{d.tag}.html").read_text(encoding="utf-8")
        for formula in re.findall(r"<math.*?</math>", html_text, flags=re.S):
            inner = re.sub(r"<[^>]+>", "", formula)
            assert not re.search(r"\\[a-zA-Z]", inner), f"{d.tag}: TeX command left in {inner[:80]!r}"


def test_progress_shows_on_the_index_and_the_pages(built):
    index = built.index.read_text(encoding="utf-8")
    for n, cls in ((1, "done"), (2, "changed"), (3, "todo")):
        row = re.search(rf'<tr class="(\w+)"><td class="n">{n:02d}</td>', index)
        assert row and row.group(1) == cls, f"day {n:02d} should be {cls}"
    coming = next(d for d in syllabus.days() if not d.published)
    assert f'<tr class="coming"><td class="n">{coming.number:02d}</td>' in index
    assert f"finished <strong>1 of the {len(syllabus.published())} published days" in index
    for number in syllabus.phases():
        assert f'id="phase-{number}"' in index
    assert 'class="mark done"' in (built.out / "day_01.html").read_text(encoding="utf-8")
    assert 'class="mark changed"' in (built.out / "day_02.html").read_text(encoding="utf-8")


def test_a_rendered_lesson_keeps_its_outputs_and_the_others_say_how_to_get_them(built):
    page = (built.out / f"{built.rendered.tag}.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "tier: sim" in page and "\x1b" not in page
    assert "without running it" not in page
    other = next(d for d in PUBLISHED if d != built.rendered)
    assert f"tinyinfer render {other.number}" in (built.out / f"{other.tag}.html").read_text(encoding="utf-8")


def test_render_runs_the_kernel_without_the_tcp_warning(capfd):
    """ipykernel warns on every TCP start that its traffic is unencrypted: the kernel uses IPC."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    lessons.run_cells(nb, timeout=120)
    err = capfd.readouterr().err
    assert nb.cells[0].outputs[0]["text"].strip() == "42"
    assert "without encryption" not in err, err


# ---- in a real browser --------------------------------------------------------------------------
def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>
window.addEventListener("load", () => {
  const r = {};
  const frac = document.querySelector("mfrac");
  if (frac) {
    const num = frac.children[0].getBoundingClientRect(), den = frac.children[1].getBoundingClientRect();
    r.fraction_stacked = num.bottom <= den.top + 1 && num.height > 0;
  }
  const sup = document.querySelector("msup");
  if (sup) r.superscript_raised = sup.children[1].getBoundingClientRect().bottom < sup.children[0].getBoundingClientRect().bottom;
  r.math = document.querySelectorAll("math").length;
  r.styled = getComputedStyle(document.querySelector("main")).maxWidth !== "none";
  r.prev = !!document.querySelector("a[rel=prev]");
  r.next = !!document.querySelector("a[rel=next]");
  r.remote = performance.getEntriesByType("resource").map(e => e.name).filter(u => !u.startsWith("file:") && !u.startsWith("data:"));
  const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(r);
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(_browser() is None, reason="no headless browser (apt-get install chromium) to open the site")
def test_a_lesson_page_in_a_headless_browser(built, tmp_path):
    """A lesson with fractions and powers: the browser lays the MathML out (numerator above the
    denominator, superscripts raised), applies the stylesheet and loads nothing remote."""
    day = next(d for d in PUBLISHED[1:-1] if "<mfrac" in (built.out / f"{d.tag}.html").read_text(encoding="utf-8")
               and "<msup" in (built.out / f"{d.tag}.html").read_text(encoding="utf-8"))
    probe = built.out / f"probe_{day.tag}.html"
    probe.write_text((built.out / f"{day.tag}.html").read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    try:
        r = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                            probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert found, f"the page did not finish loading in the browser:\n{r.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["math"] > 0 and result["fraction_stacked"] and result["superscript_raised"], result
    assert result["styled"] and result["prev"] and result["next"] and result["remote"] == [], result
