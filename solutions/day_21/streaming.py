"""Day 21 -- streaming: text pieces as tokens arrive, and the latencies a user feels.

Lesson: notes/day_21_streaming.md        Check: pytest checkers/day_21
"""
import time
from typing import Callable, Iterable, Iterator, Sequence

from shared.reference.streaming import StreamEvent, StreamStats  # the contract types


def stream(token_ids: Iterable[int], tokenizer, *, clock: Callable[[], float] = time.perf_counter
           ) -> Iterator[StreamEvent]:
    """Pull ids lazily (they may come from a generator still decoding) and yield StreamEvents.

    Text comes from tokenizer.detokenizer(), which holds back incomplete UTF-8; ids that
    complete nothing yet yield no event. t = clock() - (clock() when iteration started).
    """
    start = clock()                      # a generator body runs at the first next(): "started"
    detok = tokenizer.detokenizer()
    for tok in token_ids:                # never list(token_ids): that would wait for the last token
        piece = detok.push(tok)
        if piece:
            yield StreamEvent(piece, int(tok), clock() - start)


def _percentile(values: Sequence[float], q: float) -> float:
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
    gaps = [b.t - a.t for a, b in zip(events, events[1:])] or [0.0]
    return StreamStats(ttft_s=events[0].t, itl_mean_s=sum(gaps) / len(gaps), itl_p50_s=_percentile(gaps, 50),
                       itl_p90_s=_percentile(gaps, 90), total_s=events[-1].t, events=len(events))
