"""The README's 60-day table, generated from shared/course/syllabus.toml.

`python -m shared.course.readme` rewrites the block between the markers; a structure test checks it.
"""
from __future__ import annotations

from shared import REPO
from shared.course import syllabus

START, END = "<!-- days:start -->", "<!-- days:end -->"


def table() -> str:
    phases = syllabus.phases()
    rows = ["| day | phase | topic | provides | status |", "|---|---|---|---|---|"]
    for d in syllabus.days():
        topic = f"[{d.title}]({d.lesson})" if d.published else d.title
        provides = ", ".join(f"`{p}`" for p in d.provides) or "—"
        rows.append(f"| {d.number:02d} | {d.phase}. {phases[d.phase]} | {topic} | {provides} | "
                    f"{'published' if d.published else 'coming'} |")
    return "\n".join(rows)


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    path = REPO / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
