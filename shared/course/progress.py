"""`.tinyinfer/progress.json`: which days the learner has finished (days track only).

Written atomically (temp file + rename) by the pytest plugin. A missing or corrupt file reads
as "nothing finished" -- it never crashes a command.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

from shared import REPO


def path() -> Path:
    return Path(os.environ.get("TINYINFER_PROGRESS", REPO / ".tinyinfer" / "progress.json"))


def load() -> dict[str, dict]:
    """{'day_03': {'date':..., 'tier':'sim', 'passed': 7, 'skipped': 1}, ...}; {} if unreadable."""
    try:
        data = json.loads(path().read_text())
        days = data.get("days", {})
        return {k: v for k, v in days.items() if isinstance(v, dict)} if isinstance(days, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _save(days: dict[str, dict]) -> None:
    p = path()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".progress-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, "days": days}, f, indent=2, sort_keys=True)
    os.replace(tmp, p)


def record(number: int, tier: str, passed: int, skipped: int) -> None:
    days = load()
    key = f"day_{number:02d}"
    old = days.get(key, {})
    tiers = sorted(set(old.get("tiers", [])) | {tier})
    days[key] = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "tier": tier,
                 "tiers": tiers, "passed": passed, "skipped": skipped}
    _save(days)


def forget(number: int) -> bool:
    days = load()
    if days.pop(f"day_{number:02d}", None) is None:
        return False
    _save(days)
    return True


def finished_days() -> set[int]:
    out = set()
    for key in load():
        try:
            out.add(int(key.removeprefix("day_")))
        except ValueError:
            pass
    return out
