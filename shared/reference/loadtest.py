"""Reference for day 53: the load test's measurement core -- percentiles, one level's statistics,
one timed streaming request and the closed-loop driver. Same names and signatures as the day. The
types (Request, Usage, Chunk, Record, LoadStats) are given to the day as they are; the HTTP side,
the prompts, the report and the plots are `shared/loadtest.py` (`tinyinfer loadtest`).

Times are seconds on one monotonic clock (time.perf_counter unless a test passes its own).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

PCTS = (50, 90, 99)            # the percentiles a level reports


@dataclass(frozen=True)
class Request:
    """One request of a load test. id: unique in the run (it also travels in the prompt and in the
    OpenAI `user` field); prompt: text (a chat's user message); system: a chat's system message, or
    a completion's shared first part (None: none)."""
    id: int
    prompt: str
    max_tokens: int
    system: str | None = None


class Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Chunk:
    """One event of a streamed response as the client saw it. text: the text of ONE generated
    token ('' while a UTF-8 character is unfinished), or None for an event that carries no token
    (a chat stream's first event with the role only, the last one with the usage only)."""
    text: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    response_id: str | None = None


@dataclass
class Record:
    """What the client measured for one request. sent: just before it went out; headers: the
    response's status line and headers arrived (the stream opened; None if they never came);
    chunks: the arrival time of each token's event; done: the stream ended or the request failed.
    completion_tokens: the server's usage count (the token events when it sent no usage).
    error: why it failed, one line; None = ok (the stream finished with a finish_reason)."""
    id: int
    sent: float
    headers: float | None = None
    chunks: list[float] = field(default_factory=list)
    done: float = 0.0
    text: str = ""
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    response_id: str | None = None
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, request: Request, error: BaseException | str, at: float) -> "Record":
        """A request that failed before anything was measured (at: when it failed)."""
        return cls(request.id, sent=at, done=at, error=describe(error))


def describe(error: BaseException | str) -> str:
    """An error as one line: 'Kind: first line of the message'."""
    if isinstance(error, str):
        return error.strip().splitlines()[0] if error.strip() else "error"
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


@dataclass(frozen=True)
class LoadStats:
    """One concurrency level. requests = ok + failed + lost (the level's planned requests);
    duplicated: extra records on top of those (a request answered twice, a response id seen on
    two requests, a record of no planned request). seconds: the level's wall time. output_tokens,
    output_tok_s, req_s: ok requests only. Latencies in seconds, None when there is no sample:
    TTFT = first token event - sent; ITL = the gaps between consecutive token events of a request,
    pooled over the level's ok requests. errors: each failure's message -> how many."""
    requests: int
    ok: int
    failed: int
    lost: int
    duplicated: int
    seconds: float
    output_tokens: int
    output_tok_s: float
    req_s: float
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    itl_p50: float | None
    itl_p90: float | None
    itl_p99: float | None
    errors: dict = field(default_factory=dict)


def percentile(values, p: float) -> float:
    """The p-th percentile (0 <= p <= 100) of values, linear between the two nearest ranks (numpy's
    default rule): x[h] interpolated at h = (n - 1) * p / 100 of the sorted values."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("a percentile of no values: measure something first")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
        raise ValueError(f"a percentile is in [0, 100], got {p!r}")
    return float(np.percentile(np.asarray(v), p))


def latency_stats(records, planned, seconds: float) -> LoadStats:
    """One level's statistics from the records the driver made for the planned request ids."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise ValueError(f"seconds is the level's wall time (>= 0), got {seconds!r}")
    planned = set(planned)
    first, extra, ids = {}, 0, set()
    for r in records:
        if r.id not in planned or r.id in first or (r.ok and r.response_id is not None and r.response_id in ids):
            extra += 1
            continue
        first[r.id] = r
        if r.ok and r.response_id is not None:
            ids.add(r.response_id)
    ok = [r for r in first.values() if r.ok]
    ttft = [r.chunks[0] - r.sent for r in ok if r.chunks]
    itl = list(np.concatenate([np.diff(r.chunks) for r in ok])) if ok else []
    tokens = sum(r.completion_tokens for r in ok)

    def pcts(xs):
        return [percentile(xs, p) if len(xs) else None for p in PCTS]
    rate = (lambda n: n / seconds) if seconds > 0 else (lambda n: 0.0)
    return LoadStats(len(planned), len(ok), len(first) - len(ok), len(planned) - len(first), extra, float(seconds),
                     tokens, rate(tokens), rate(len(ok)), *pcts(ttft), *pcts(itl),
                     dict(Counter(r.error for r in first.values() if not r.ok)))


async def timed_request(open_stream, request: Request, *, clock=time.perf_counter) -> Record:
    """Send one request and time it. open_stream(request) (awaited) returns once the response's
    headers are in, as an async iterator of Chunks. Every error becomes a failed Record; a
    cancellation (Ctrl-C) is not an error and propagates."""
    rec = Record(request.id, sent=clock())
    text, usage = [], None
    try:
        stream = await open_stream(request)
        rec.headers = clock()
        async for c in stream:
            now = clock()
            rec.response_id = rec.response_id or c.response_id
            if c.text is not None:
                rec.chunks.append(now)
                text.append(c.text)
            rec.finish_reason = c.finish_reason or rec.finish_reason
            usage = c.usage or usage
        if rec.finish_reason is None:
            rec.error = "the stream ended without a finish_reason"
    except Exception as e:
        rec.error = describe(e)
    rec.prompt_tokens, rec.completion_tokens = usage or (None, len(rec.chunks))
    rec.done, rec.text = clock(), "".join(text)
    return rec


async def drive(requests, concurrency: int, send, records=None) -> list[Record]:
    """Closed loop: exactly `concurrency` requests in flight while any is left to send (fewer at
    the end); each sent once, in order; each ends as one Record appended to `records` (a failed
    one when send raises), so an interrupted run keeps what finished. Returns records."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    records = [] if records is None else records
    gate = asyncio.Semaphore(concurrency)

    async def one(r):
        async with gate:
            try:
                rec = await send(r)
            except Exception as e:
                rec = Record.failed(r, e, time.perf_counter())
            records.append(rec)
    await asyncio.gather(*(one(r) for r in requests))
    return records
