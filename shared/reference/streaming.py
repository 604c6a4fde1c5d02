"""Reference streaming: token ids in, UTF-8-safe text pieces out, each stamped with a time.

The stream is what a user sees; its timestamps give the two latencies users feel:
TTFT (time to the first piece) and inter-token latency (the gaps between pieces).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence


@dataclass(frozen=True)
class StreamEvent:
    text: str        # a non-empty piece of final text
    token_id: int    # the token that completed it
    t: float         # seconds since the stream started


@dataclass(frozen=True)
class StreamStats:
    ttft_s: float        # time to first piece
    itl_mean_s: float    # inter-token latency: gaps between consecutive pieces
    itl_p50_s: float
    itl_p90_s: float
    total_s: float       # time of the last piece
    events: int


def stream(token_ids: Iterable[int], tokenizer, *, clock: Callable[[], float] = time.perf_counter
           ) -> Iterator[StreamEvent]:
    """Pull ids lazily (they may come from a generator still decoding) and yield StreamEvents.

    Text comes from tokenizer.detokenizer(), which holds back incomplete UTF-8; ids that
    complete nothing yet yield no event. t = clock() - (clock() when iteration started).
    """
    start = clock()
    detok = tokenizer.detokenizer()
    for tok in token_ids:
        piece = detok.push(tok)
        if piece:
            yield StreamEvent(piece, int(tok), clock() - start)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(events: Sequence[StreamEvent]) -> StreamStats:
    """TTFT and inter-token latency stats; the ITL fields are 0.0 with fewer than two events."""
    events = list(events)
    if not events:
        raise ValueError("summary of an empty stream: generate at least one token")
    gaps = [b.t - a.t for a, b in zip(events, events[1:])]
    if not gaps:
        gaps = [0.0]
    return StreamStats(ttft_s=events[0].t, itl_mean_s=sum(gaps) / len(gaps), itl_p50_s=percentile(gaps, 50),
                       itl_p90_s=percentile(gaps, 90), total_s=events[-1].t, events=len(events))
