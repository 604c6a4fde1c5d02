"""`.tinyinfer/progress.json`: which days the learner has finished (days track only).

This is the learner's work, so it is never lost and never faked:
- writes hold a lock (flock on progress.json.lock, where fcntl exists) around read-modify-write and
  replace the file atomically, so processes recording at once lose nothing;
- an unreadable file is moved aside to progress.json.corrupt-<time>, never overwritten, and
  `problems()` says so (for `tinyinfer status` and pytest's summary);
- each record keeps a hash of days/day_NN/*.py: once those files change the day is stale, and the
  engine uses the reference for it until its checker passes again.
Reads never raise: a missing or unusable file counts as "nothing finished".
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; the atomic replace still keeps the file whole
    fcntl = None

from shared import REPO

DAYS = REPO / "days"  # the files a record's hash covers


def path() -> Path:
    return Path(os.environ.get("TINYINFER_PROGRESS", REPO / ".tinyinfer" / "progress.json"))


@contextlib.contextmanager
def _locked():
    """Hold the sidecar lock: one read-modify-write at a time, across processes."""
    p = path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(p.name + ".lock"), "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _read() -> tuple[dict[str, dict], str | None]:
    """(days, None), or ({}, why) when the file exists but cannot be used."""
    try:
        data = json.loads(path().read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as e:  # a bad encoding is a ValueError too
        return {}, f"{type(e).__name__}: {e}"
    days = data.get("days") if isinstance(data, dict) else None
    if not isinstance(days, dict):
        return {}, "no 'days' table"
    return {k: v for k, v in days.items() if isinstance(v, dict)}, None


def _load_locked() -> dict[str, dict]:
    """Under the lock: the recorded days, after moving an unusable file aside so no write replaces it."""
    days, why = _read()
    if why:
        p = path()
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        dest, n = p.with_name(f"{p.name}.corrupt-{stamp}"), 1
        while dest.exists():
            dest, n = p.with_name(f"{p.name}.corrupt-{stamp}-{n}"), n + 1
        os.rename(p, dest)
    return days


def load() -> dict[str, dict]:
    """{'day_03': {'date':..., 'tier':'sim', 'passed': 7, 'skipped': 1, 'files': sha256}, ...}."""
    days, why = _read()
    if why:
        with contextlib.suppress(OSError):  # read-only checkout: leave it; problems() still reports it
            with _locked():
                days = _load_locked()
    return days


def problems() -> list[str]:
    """Warnings about progress files that could not be read (empty when all is well)."""
    p, out = path(), []
    try:
        why = _read()[1]
        if why:
            out.append(f"{p} cannot be read ({why}): it counts as no finished days")
        for old in sorted(p.parent.glob(p.name + ".corrupt-*")):
            days = sorted(set(re.findall(r"day_\d\d", old.read_text(errors="replace"))))
            out.append(f"{old} is an unreadable progress file, kept aside"
                       + (f" (it mentions {', '.join(days)})" if days else "")
                       + ": re-run those checkers to record them again, then delete it")
    except OSError:
        pass
    return out


def _save(days: dict[str, dict]) -> None:
    p = path()
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".progress-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, "days": days}, f, indent=2, sort_keys=True)
    os.replace(tmp, p)


def digest(number: int) -> str:
    """sha256 over days/day_NN/*.py (names and contents): a record is stale once this changes."""
    files = sorted((DAYS / f"day_{number:02d}").glob("*.py"))
    lines = [f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def record(number: int, tier: str, passed: int, skipped: int) -> None:
    with _locked():
        days = _load_locked()
        key = f"day_{number:02d}"
        tiers = sorted(set(days.get(key, {}).get("tiers", [])) | {tier})
        days[key] = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "tier": tier, "tiers": tiers,
                     "passed": passed, "skipped": skipped, "files": digest(number)}
        _save(days)


def forget(number: int) -> bool:
    with _locked():
        days = _load_locked()
        if days.pop(f"day_{number:02d}", None) is None:
            return False
        _save(days)
        return True


def _numbered(days: dict[str, dict]) -> dict[int, dict]:
    out = {}
    for key, rec in days.items():
        with contextlib.suppress(ValueError):
            out[int(key.removeprefix("day_"))] = rec
    return out


def finished_days() -> set[int]:
    """Every recorded day, stale or not (registry.finished leaves the stale ones out)."""
    return set(_numbered(load()))


def stale_days() -> set[int]:
    """Recorded days whose files changed since they passed. A record without a hash (written before
    hashes were kept) cannot tell, so it is trusted."""
    out = set()
    for number, rec in _numbered(load()).items():
        try:
            if "files" in rec and rec["files"] != digest(number):
                out.add(number)
        except OSError:
            out.add(number)
    return out
