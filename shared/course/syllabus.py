"""Read shared/course/syllabus.toml, the one source of truth for the 60 days."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from shared import REPO

SYLLABUS = Path(__file__).with_name("syllabus.toml")


@dataclass(frozen=True)
class Day:
    number: int
    slug: str
    title: str
    phase: int
    provides: tuple[str, ...]
    lesson: str
    published: bool
    hints: tuple[str, ...]
    features: tuple[str, ...] = ()   # what a feature day turns on in the engine (e.g. "graphs")
    ahead_of_order: str = ""         # why a day is published before the days numbered below it

    @property
    def tag(self) -> str:
        return f"day_{self.number:02d}"

    def path(self, top: str) -> Path:
        """Folder of this day under `days`, `solutions` or `checkers`."""
        return REPO / top / self.tag


@functools.lru_cache(maxsize=1)
def load() -> tuple[dict, list[Day]]:
    data = tomllib.loads(SYLLABUS.read_text())
    days = [Day(d["number"], d["slug"], d["title"], d["phase"], tuple(d.get("provides", [])),
                d["lesson"], d.get("status") == "published", tuple(d.get("hints", [])), tuple(d.get("features", [])),
                d.get("ahead_of_order", ""))
            for d in data["days"]]
    phases = {p["number"]: p["title"] for p in data["phases"]}
    return phases, days


def days() -> list[Day]:
    return load()[1]


def phases() -> dict[int, str]:
    return load()[0]


def published() -> list[Day]:
    return [d for d in days() if d.published]


def day(number: int) -> Day:
    for d in days():
        if d.number == number:
            return d
    raise KeyError(number)


def parse_day(text: str | int) -> Day:
    """'3', '03', 'day_03' -> Day; ValueError with a one-line message otherwise."""
    s = str(text).lower().removeprefix("day_").removeprefix("day")
    if not s.isdigit() or not 1 <= int(s) <= len(days()):
        raise ValueError(f"unknown day {text!r}: use a number from 1 to {len(days())}")
    return day(int(s))
