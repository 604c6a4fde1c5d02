"""Day 53: the load test's measurement core -- what `tinyinfer loadtest` reports, and how it keeps
C requests in flight.

A load test sends many streaming requests to a server (day 52's, or any OpenAI-compatible one)
at a fixed concurrency C and reports, per level: how many requests succeeded, failed, were lost
or answered twice; the output tokens per second and requests per second; and the latency a user
feels, as percentiles: time to first token (TTFT) and the inter-token latency (ITL). The HTTP
side, the prompts, the report and the plots are given (shared/loadtest.py); this file is what
they measure with: `percentile`, `latency_stats` (one level), `timed_request` (one streamed
request, timed) and `drive` (the closed loop: C clients, each sending its next request when its
previous one ends). Times are seconds on one clock. Host Python and asyncio; no device.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

from shared.reference.loadtest import PCTS, Chunk, LoadStats, Record, Request, Usage, describe  # noqa: F401 (given)


def percentile(values, p: float) -> float:
    """The p-th percentile (0 <= p <= 100) of values, linear between the two nearest ranks (numpy's
    default rule): x[h] interpolated at h = (n - 1) * p / 100 of the sorted values."""
    xs = sorted(float(x) for x in values)
    if not xs:
        raise ValueError("a percentile of no values: measure something first")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(f"a percentile is in [0, 100], got {p!r}")
    h = (len(xs) - 1) * p / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def latency_stats(records, planned, seconds: float) -> LoadStats:
    """One level's statistics from the records the driver made for the planned request ids."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise ValueError(f"seconds is the level's wall time (>= 0), got {seconds!r}")
    planned = set(planned)
    first: dict[int, Record] = {}
    seen_responses: set[str] = set()
    duplicated = 0
    for r in records:
        if r.id not in planned or r.id in first:
            duplicated += 1                       # a request answered twice, or one nobody sent
            continue
        if r.ok and r.response_id is not None:
            if r.response_id in seen_responses:   # one response streamed to two requests
                duplicated += 1
                continue
            seen_responses.add(r.response_id)
        first[r.id] = r
    ok = [r for r in first.values() if r.ok]
    ttft = [r.chunks[0] - r.sent for r in ok if r.chunks]
    itl = [b - a for r in ok for a, b in zip(r.chunks, r.chunks[1:])]
    tokens = sum(r.completion_tokens for r in ok)

    def pcts(xs):                                 # p50, p90, p99 (PCTS); None without a sample
        return [percentile(xs, p) if xs else None for p in PCTS]

    def rate(n):
        return n / seconds if seconds > 0 else 0.0
    ttft_p50, ttft_p90, ttft_p99 = pcts(ttft)
    itl_p50, itl_p90, itl_p99 = pcts(itl)
    return LoadStats(requests=len(planned), ok=len(ok), failed=len(first) - len(ok), lost=len(planned - first.keys()),
                     duplicated=duplicated, seconds=float(seconds), output_tokens=tokens, output_tok_s=rate(tokens),
                     req_s=rate(len(ok)), ttft_p50=ttft_p50, ttft_p90=ttft_p90, ttft_p99=ttft_p99,
                     itl_p50=itl_p50, itl_p90=itl_p90, itl_p99=itl_p99,
                     errors=dict(Counter(r.error for r in first.values() if not r.ok)))


async def timed_request(open_stream, request: Request, *, clock=time.perf_counter) -> Record:
    """Send one request and time it. open_stream(request) (awaited) returns once the response's
    headers are in, as an async iterator of Chunks. Every error becomes a failed Record; a
    cancellation (Ctrl-C) is not an error and propagates."""
    rec = Record(request.id, sent=clock())
    pieces, usage = [], None
    try:
        stream = await open_stream(request)
        rec.headers = clock()
        async for chunk in stream:
            now = clock()
            if rec.response_id is None:
                rec.response_id = chunk.response_id
            if chunk.text is not None:            # a token (its text may be '')
                rec.chunks.append(now)
                pieces.append(chunk.text)
            if chunk.finish_reason is not None:
                rec.finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
        if rec.finish_reason is None:
            rec.error = "the stream ended without a finish_reason"
    except Exception as e:                        # not CancelledError: Ctrl-C stops the run
        rec.error = describe(e)
    # the server's count of tokens; without usage, the token events
    rec.prompt_tokens, rec.completion_tokens = usage if usage is not None else (None, len(rec.chunks))
    rec.done = clock()
    rec.text = "".join(pieces)
    return rec


async def drive(requests, concurrency: int, send, records=None) -> list[Record]:
    """Closed loop: exactly `concurrency` requests in flight while any is left to send (fewer at
    the end); each sent once, in order; each ends as one Record appended to `records` (a failed
    one when send raises), so an interrupted run keeps what finished. Returns records."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    records = [] if records is None else records
    requests = list(requests)
    todo = iter(requests)                         # shared: each request is taken by one client only

    async def client():
        for r in todo:
            try:
                rec = await send(r)
            except Exception as e:
                rec = Record.failed(r, e, time.perf_counter())
            records.append(rec)
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(requests)))))
    return records
