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
    raise NotImplementedError("Day 21: stream is not written yet -- edit days/day_21/streaming.py "
                              "(lesson: notes/day_21_streaming.md)")


def summary(events: Sequence[StreamEvent]) -> StreamStats:
    """TTFT and inter-token latency stats; the ITL fields are 0.0 with fewer than two events."""
    raise NotImplementedError("Day 21: summary is not written yet -- edit days/day_21/streaming.py "
                              "(lesson: notes/day_21_streaming.md)")
