"""Day 53 (your code): the load test's measurement core -- what `tinyinfer loadtest` reports, and
how it keeps C requests in flight.

Lesson: notes/day_53_load_test.md        Check: pytest checkers/day_53

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

import asyncio  # noqa: F401 (for drive)
import math  # noqa: F401
import time
from collections import Counter  # noqa: F401

# given: the types (read their docstrings) and describe(error) -> one line
from shared.reference.loadtest import PCTS, Chunk, LoadStats, Record, Request, Usage, describe  # noqa: F401


def percentile(values, p: float) -> float:
    """The p-th percentile (0 <= p <= 100) of values, linear between the two nearest ranks (numpy's
    default rule): x[h] interpolated at h = (n - 1) * p / 100 of the sorted values."""
    # TODO(day 53): sort the values (any iterable, any order). No values, or p outside [0, 100] (a
    #   bool is not a number): a one-line ValueError. Then h = (n - 1) * p / 100: the value at
    #   rank floor(h), plus the fraction h - floor(h) of the step to the next rank (none past the
    #   last). p = 0 is the smallest value, p = 100 the largest, one value is every percentile.
    raise NotImplementedError("Day 53: percentile")


def latency_stats(records, planned, seconds: float) -> LoadStats:
    """One level's statistics from the records the driver made for the planned request ids."""
    # TODO(day 53): seconds must be a number >= 0 and finite (ValueError, one line). Walk the
    #   records in order and keep the FIRST record of each planned id; count as duplicated a record
    #   of an id already kept, of an id nobody planned, or an ok one whose response_id (when not
    #   None) an ok record kept before already had (one response streamed to two requests).
    #   Of the kept records: ok (r.ok) and failed; lost = planned ids with no record at all.
    #   Over the ok ones only: TTFT = r.chunks[0] - r.sent (the first TOKEN, not r.headers), ITL
    #   = every gap between consecutive r.chunks (pooled over requests; the wait for the first
    #   token is TTFT, not a gap), output tokens = the sum of r.completion_tokens (tokens, not
    #   characters of r.text); percentile(...) at each p of PCTS, None when there is no sample.
    #   Rates: output tokens and ok requests per second (0.0 when seconds is 0). errors: each
    #   failed record's error -> how many (collections.Counter). LoadStats's docstring has the rest.
    raise NotImplementedError("Day 53: latency_stats")


async def timed_request(open_stream, request: Request, *, clock=time.perf_counter) -> Record:
    """Send one request and time it. open_stream(request) (awaited) returns once the response's
    headers are in, as an async iterator of Chunks. Every error becomes a failed Record; a
    cancellation (Ctrl-C) is not an error and propagates."""
    # TODO(day 53): rec = Record(request.id, sent=clock()) BEFORE awaiting open_stream(request);
    #   rec.headers = clock() once it returns. Then `async for` over the stream: at each chunk,
    #   now = clock(); a chunk whose text is not None is a token: append now to rec.chunks and keep
    #   its text (chunks whose text is None -- a chat's role event, the usage event -- are not
    #   tokens); keep the first response_id, the finish_reason and the usage you see. A stream
    #   that ends without a finish_reason is an error ("the stream ended without ...").
    #   Any Exception (HTTP status, connection, timeout, a broken stream) -> rec.error =
    #   describe(e); never catch asyncio.CancelledError (Ctrl-C must stop the run).
    #   Afterwards: prompt_tokens, completion_tokens from the usage (else None and the number of
    #   token events), rec.done = clock(), rec.text = the texts joined. Return rec.
    raise NotImplementedError("Day 53: timed_request")


async def drive(requests, concurrency: int, send, records=None) -> list[Record]:
    """Closed loop: exactly `concurrency` requests in flight while any is left to send (fewer at
    the end); each sent once, in order; each ends as one Record appended to `records` (a failed
    one when send raises), so an interrupted run keeps what finished. Returns records."""
    # TODO(day 53): concurrency must be an int >= 1 (not a bool): ValueError, one line. records:
    #   the list given (or a new one). Start min(concurrency, len(requests)) clients with
    #   asyncio.gather; each takes the next request from ONE shared iterator (so no request is
    #   taken twice, none skipped), awaits send(request), appends the Record, and takes the next
    #   at once -- C in flight until the iterator is empty. send raising an Exception: append
    #   Record.failed(request, e, time.perf_counter()) instead; the request is never dropped.
    raise NotImplementedError("Day 53: drive")
