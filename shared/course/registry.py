"""Which implementation of each engine component to use.

`resolve(name, track)` returns the implementation from the highest-numbered *finished* day that
provides `name`, else the PyTorch reference in shared/reference/. Finished = every published
day on the `solutions` track; on the `days` track, a day whose checker passed (progress.json) and
whose files have not changed since.
`Ops(track)` bundles the resolved components so the model code reads `ops.rmsnorm(...)`.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from shared.course import progress, syllabus

TRACKS = ("days", "solutions")


def default_track() -> str:
    return check_track(os.environ.get("TINYINFER_TRACK", "days"))


def check_track(track: str) -> str:
    if track not in TRACKS:
        raise ValueError(f"unknown track {track!r}: use 'days' (your code) or 'solutions'")
    return track


def finished(track: str) -> set[int]:
    """Day numbers whose code the engine may use on this track: on `days`, recorded and not stale
    (a day whose files changed since it passed runs on the reference until it passes again)."""
    check_track(track)
    published = {d.number for d in syllabus.published()}
    if track == "solutions":
        return published
    return published & (progress.finished_days() - progress.stale_days())


@dataclass(frozen=True)
class Source:
    name: str
    day: int | None  # None: the PyTorch reference

    def describe(self, track: str) -> str:
        return "reference (PyTorch)" if self.day is None else f"{track}/day_{self.day:02d}"


def source(name: str, track: str) -> Source:
    done = finished(track)
    days = [d.number for d in syllabus.days() if name in d.provides and d.number in done]
    return Source(name, max(days) if days else None)


def has_feature(feature: str, track: str) -> bool:
    """Whether a finished day on this track turns `feature` on (syllabus.toml `features`)."""
    done = finished(track)
    return any(feature in d.features and d.number in done for d in syllabus.days())


def day_module(number: int, track: str):
    """The package days.day_NN or solutions.day_NN."""
    return importlib.import_module(f"{check_track(track)}.day_{number:02d}")


def reference(name: str):
    from shared import reference as ref
    try:
        return getattr(ref, name)
    except AttributeError:
        owners = [d for d in syllabus.days() if name in d.provides]
        where = f"finish day {owners[0].number:02d} ({owners[0].title})" if owners else "it is not in the syllabus"
        raise LookupError(f"no implementation of {name!r} yet: {where}") from None


def resolve(name: str, track: str | None = None):
    track = track or default_track()
    src = source(name, track)
    if src.day is None:
        return reference(name)
    return getattr(day_module(src.day, track), name)


def resolve_before(name: str, track: str, day: int):
    """`resolve`'s rule with days >= `day` left out: the implementation a day takes over from
    (day 41's linear hands plain tensors to day 11's; day 48's hands what its tensor cores do not
    take to day 41's). It reads the finished days on every call (progress.json on the days track):
    callers on a hot path cache the result, as both days do."""
    done = finished(track)
    days = [d.number for d in syllabus.days() if name in d.provides and d.number < day and d.number in done]
    return getattr(day_module(max(days), track), name) if days else reference(name)


def all_names() -> list[str]:
    seen: list[str] = []
    for d in syllabus.days():
        seen += [n for n in d.provides if n not in seen]
    return seen


class Ops:
    """Attribute access resolves a component once: `ops.rmsnorm`, `ops.attention`, ..."""

    def __init__(self, track: str | None = None, overrides: dict | None = None):
        self.track = track or default_track()
        self._cache = dict(overrides or {})

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._cache:
            self._cache[name] = resolve(name, self.track)
        return self._cache[name]

    def source(self, name: str) -> Source:
        return source(name, self.track)
