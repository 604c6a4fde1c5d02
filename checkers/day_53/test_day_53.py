"""Day 53 checker: the load test's measurement core. Run: pytest checkers/day_53

Your functions against properties, not against one answer:
- percentile: numpy's default (linear) rule on random data of every size, any order; monotone in
  p, from the smallest value (p = 0) to the largest (p = 100); hand cases; one-line errors;
- latency_stats: a level worked by hand (TTFT from the first token, not the headers; ITL between
  tokens only; tokens from usage; failed requests reported, never in the latencies); random levels
  with failures, duplicates (the same id twice, one response id on two requests, an id nobody
  sent) and lost requests against a direct count; no records, one record, zero seconds;
- timed_request: fake streams on a fake clock (the role and usage events are not tokens; an
  error at any point is a failed record with a one-line message; a stream without a
  finish_reason failed; no usage -> the token events are counted; Ctrl-C's cancellation passes);
- drive: a fake server the test releases one request at a time, in random order: exactly
  min(C, left) in flight after every release, each request sent once and in order, one record
  each, a raising send a failed record, records kept when the run is cancelled.
End to end (a real `tinyinfer serve` of the tiny model on 127.0.0.1, the solutions' server): the
load test with your functions loses and duplicates nothing and the pool is full after each
level; the command's report is your latency_stats of its own records; a level over the server's
max_pending reports its 503s as failed (exit 1); bad flags, an unreachable server and a wrong key
are one line and exit 2; Ctrl-C writes what was measured and the server gets its blocks back.
GPU (bench marker): SmolLM2 at concurrency 1, 8, 32, 128 (nothing lost, the pool full after,
p99 TTFT recorded) and the prefix cache's TTFT with a 1,000-word shared prefix, on vs off.
"""
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from shared import REPO
from shared.reference.loadtest import PCTS, Chunk, Record, Request, Usage

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "sk-day53"


def one_line_value_error(fn, *args, **kw):
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def limited(fn, limit=60.0):
    """fn() in a thread, failing after `limit` seconds instead of hanging the checker (a driver that
    swallows its cancellation, or one whose clients never stop, would keep it waiting forever)."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:              # re-raised in the test's thread
            out["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"did not finish in {limit:.0f} s: a client that never stops (a swallowed cancellation?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def run_async(coro, limit=60.0):
    return limited(lambda: asyncio.run(coro), limit)


# ---- percentile ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_percentile_is_numpys_linear_rule(day, seed):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 5, 99, 100, 101, int(rng.integers(4, 400))):
        xs = rng.lognormal(-3, 1, n)
        if seed % 2:
            xs = np.round(xs, 2)                      # ties
        for p in (0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100, float(rng.uniform(0, 100))):
            got = day.percentile(list(rng.permutation(xs)), p)
            assert math.isclose(got, float(np.percentile(xs, p)), rel_tol=1e-12, abs_tol=1e-15), \
                f"{n} values, p{p}: {got} but numpy's linear rule gives {np.percentile(xs, p)}"


def test_percentile_by_hand(day):
    assert day.percentile([3, 1, 4, 2], 50) == 2.5, "the median of 1, 2, 3, 4 is halfway between 2 and 3"
    assert day.percentile([1, 2, 3, 4], 0) == 1 and day.percentile([1, 2, 3, 4], 100) == 4
    assert math.isclose(day.percentile([1, 2], 90), 1.9), "p90 of two values: 90% of the way from the first"
    assert math.isclose(day.percentile([0, 10, 20, 30, 40], 99), 39.6), "h = (n - 1) * p / 100 = 3.96"
    assert math.isclose(day.percentile([0, 10, 20, 30, 40], 25), 10.0)
    assert day.percentile([7.5], 99) == 7.5 and day.percentile([7.5], 0) == 7.5, "one value is every percentile"
    assert day.percentile((x for x in [5, 1, 3]), 50) == 3, "any iterable, any order"


@pytest.mark.parametrize("seed", range(3))
def test_percentile_is_monotone_in_p(day, seed):
    rng = random.Random(seed)
    xs = [rng.expovariate(20) for _ in range(rng.randint(1, 60))]
    ps = sorted(rng.uniform(0, 100) for _ in range(40)) + [100]
    got = [day.percentile(xs, p) for p in [0] + ps]
    assert got[0] == min(xs) and got[-1] == max(xs)
    assert all(a <= b for a, b in zip(got, got[1:])), "a higher percentile is never smaller"


def test_percentile_bad_input_is_one_line(day):
    one_line_value_error(day.percentile, [], 50)
    for p in (-1, 100.5, float("nan"), True):
        one_line_value_error(day.percentile, [1.0, 2.0], p)


# ---- latency_stats ---------------------------------------------------------------------------------
def rec(i, sent, chunks, tokens=None, error=None, response_id="auto", text=None, headers=None):
    chunks = list(chunks)
    return Record(i, sent=sent, headers=sent + 0.001 if headers is None else headers, chunks=chunks,
                  done=(chunks[-1] if chunks else sent) + 0.001,
                  text="x" * len(chunks) if text is None else text,
                  completion_tokens=len(chunks) if tokens is None else tokens, prompt_tokens=10,
                  response_id=f"cmpl-{i}" if response_id == "auto" else response_id,
                  finish_reason=None if error else "length", error=error)


def test_a_level_by_hand(day):
    records = [rec(0, 0.0, [0.10, 0.12, 0.15], headers=0.002),
               rec(2, 2.0, [2.20, 2.25, 2.26, 2.36], text="four tokens of text"),
               rec(1, 1.0, [1.30, 1.31], tokens=2),
               rec(3, 3.0, [3.05], error="InternalServerError: Error code: 503")]
    s = day.latency_stats(records, [0, 1, 2, 3, 4], 4.0)
    assert (s.requests, s.ok, s.failed, s.lost, s.duplicated) == (5, 3, 1, 1, 0), s
    # TTFT: 0.10, 0.20, 0.30 (first token - sent); ITL: .02 .03 | .05 .01 .10 | .01 (gaps between tokens)
    want = dict(ttft_p50=0.2, ttft_p90=0.28, ttft_p99=0.298, itl_p50=0.025, itl_p90=0.075, itl_p99=0.0975)
    for name, v in want.items():
        assert math.isclose(getattr(s, name), v, rel_tol=1e-9), \
            f"{name} = {getattr(s, name)}, by hand {v} (TTFT from the first token; ITL between tokens, pooled)"
    assert s.output_tokens == 9 and math.isclose(s.output_tok_s, 9 / 4.0), \
        f"{s.output_tokens} tokens, {s.output_tok_s} tok/s: 9 tokens of the ok requests (usage) in 4 s"
    assert math.isclose(s.req_s, 3 / 4.0), "ok requests per second"
    assert s.seconds == 4.0 and s.errors == {"InternalServerError: Error code: 503": 1}


def independent(records, planned, seconds):
    """The definitions, counted directly."""
    planned = set(planned)
    kept, dup, rids = {}, 0, set()
    for r in records:
        if r.id not in planned or r.id in kept or (r.error is None and r.response_id in rids and r.response_id):
            dup += 1
            continue
        kept[r.id] = r
        if r.error is None and r.response_id:
            rids.add(r.response_id)
    ok = [r for r in kept.values() if r.error is None]
    ttft = [r.chunks[0] - r.sent for r in ok if r.chunks]
    itl = [g for r in ok for g in np.diff(r.chunks)]
    out = dict(requests=len(planned), ok=len(ok), failed=len(kept) - len(ok), lost=len(planned) - len(kept),
               duplicated=dup, output_tokens=sum(r.completion_tokens for r in ok))
    for name, xs in (("ttft", ttft), ("itl", itl)):
        for p in PCTS:
            out[f"{name}_p{p}"] = float(np.percentile(xs, p)) if len(xs) else None
    out["output_tok_s"] = out["output_tokens"] / seconds if seconds else 0.0
    out["req_s"] = len(ok) / seconds if seconds else 0.0
    return out


@pytest.mark.parametrize("seed", range(8))
def test_random_levels(day, seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    planned = list(range(100, 100 + n))
    records = []
    for i in planned:
        roll = rng.random()
        if roll < 0.1:
            continue                                                 # lost
        sent = rng.uniform(0, 5)
        t = sent + rng.uniform(0.01, 2)
        chunks = [t]
        for _ in range(rng.randint(0, 12)):
            t += rng.expovariate(50)
            chunks.append(t)
        err = "APIConnectionError: Connection error." if roll < 0.25 else None
        records.append(rec(i, sent, chunks, tokens=len(chunks) + rng.randint(0, 2), error=err,
                           text="é" * rng.randint(0, 30)))
    if records and seed % 2:
        records.append(records[rng.randrange(len(records))])        # the same request answered twice
        twin = records[rng.randrange(len(records))]
        records.append(rec(999, twin.sent, twin.chunks))             # a request nobody planned
    if sum(r.error is None for r in records) >= 2 and seed % 3 == 0:
        a, b = [r for r in records if r.error is None][:2]
        b.response_id = a.response_id                                # one response streamed to two requests
    rng.shuffle(records)
    seconds = rng.uniform(1, 30)
    s = day.latency_stats(records, planned, seconds)
    want = independent(records, planned, seconds)
    for name, v in want.items():
        assert close(getattr(s, name), v), f"{name}: {getattr(s, name)}, counted directly {v}"
    assert s.ok + s.failed + s.lost == s.requests == n, "every planned request is ok, failed or lost"
    assert sum(s.errors.values()) == s.failed


def test_lost_and_duplicated_are_counted_apart(day):
    """A duplicate must not hide a lost request: 3 records for 3 planned ids, one twice, one missing."""
    records = [rec(0, 0, [0.1]), rec(0, 0, [0.1], response_id="cmpl-0b"), rec(2, 0, [0.2])]
    s = day.latency_stats(records, [0, 1, 2], 1.0)
    assert (s.ok, s.lost, s.duplicated) == (2, 1, 1), f"ok {s.ok}, lost {s.lost}, duplicated {s.duplicated}"
    s = day.latency_stats([rec(0, 0, [0.1], response_id="cmpl-same"), rec(1, 0, [0.3], response_id="cmpl-same")],
                          [0, 1], 1.0)
    assert (s.ok, s.duplicated, s.lost) == (1, 1, 1), "one response id on two requests: one of them is a duplicate"
    s = day.latency_stats([rec(0, 0, [0.1], response_id=None), rec(1, 0, [0.3], response_id=None),
                           rec(7, 0, [0.3])], [0, 1], 1.0)
    assert (s.ok, s.duplicated) == (2, 1), "no response id is no evidence; a record of no planned request is extra"


def test_failed_requests_are_reported_not_measured(day):
    bad = rec(1, 0.0, [5.0, 9.0], tokens=50, error="ReadTimeout: timed out")
    s = day.latency_stats([rec(0, 0.0, [0.5, 0.6]), bad], [0, 1], 2.0)
    assert (s.ok, s.failed) == (1, 1), "a request with an error is failed, never ok"
    assert s.output_tokens == 2 and s.ttft_p99 == 0.5 and math.isclose(s.itl_p99, 0.1), \
        "a failed request's tokens and times stay out of the throughput and the latencies"


def test_tokens_are_usage_not_characters(day):
    s = day.latency_stats([rec(0, 0.0, [0.1, 0.2, 0.3], tokens=3, text="three long pieces")], [0], 1.0)
    assert s.output_tokens == 3 and s.output_tok_s == 3.0, "output tokens from usage, not len(text)"


def test_edge_cases(day):
    s = day.latency_stats([], [0, 1, 2], 3.0)
    assert (s.requests, s.ok, s.failed, s.lost) == (3, 0, 0, 3) and s.output_tok_s == 0 and s.req_s == 0
    assert all(getattr(s, f"{k}_p{p}") is None for k in ("ttft", "itl") for p in PCTS), "no sample: None"
    s = day.latency_stats([rec(5, 1.0, [1.25])], [5], 0.5)
    assert s.ttft_p50 == s.ttft_p99 == 0.25 and s.itl_p50 is None, "one token: a TTFT, no gap"
    s = day.latency_stats([rec(5, 1.0, [1.25])], [5], 0)
    assert s.output_tok_s == 0.0 and s.req_s == 0.0, "zero seconds: no rate"
    s = day.latency_stats([], [], 0)
    assert s.requests == 0 and s.ok == 0
    for bad in (-1.0, float("nan"), float("inf")):
        one_line_value_error(day.latency_stats, [], [0], bad)


# ---- timed_request ---------------------------------------------------------------------------------
class Clock:
    def __init__(self, t=10.0):
        self.t = t

    def __call__(self):
        return self.t


def fake_open(clock, events, headers_after=0.01, open_error=None):
    """open_stream for timed_request: the headers come after headers_after seconds, then each
    (delay, Chunk or Exception) of events; the clock moves by each delay."""
    async def open_stream(request):
        await asyncio.sleep(0)
        clock.t += headers_after
        if open_error is not None:
            raise open_error

        async def gen():
            for delay, item in events:
                await asyncio.sleep(0)
                clock.t += delay
                if isinstance(item, BaseException):
                    raise item
                yield item
        return gen()
    return open_stream


def timed(day, clock, open_stream, i=7):
    return run_async(day.timed_request(open_stream, Request(i, "p", 3), clock=clock))


def test_timed_request_times_the_tokens(day):
    clock = Clock(10.0)
    events = [(0.05, Chunk(None, None, None, "cmpl-1")),                 # a chat stream's role event
              (0.20, Chunk("ab", None, None, "cmpl-1")),
              (0.03, Chunk("", None, None, "cmpl-1")),                   # a token whose text is unfinished
              (0.04, Chunk("c", "length", None, "cmpl-1")),
              (0.01, Chunk(None, None, Usage(7, 3), "cmpl-1"))]          # the usage event
    r = timed(day, clock, fake_open(clock, events))
    assert r.id == 7 and r.ok and r.error is None and r.finish_reason == "length" and r.response_id == "cmpl-1"
    assert r.sent == 10.0, "sent: the clock just before the request goes out"
    assert math.isclose(r.headers, 10.01), "headers: when open_stream returned"
    assert np.allclose(r.chunks, [10.26, 10.29, 10.33]), \
        f"chunks {r.chunks}: one time per TOKEN event (text not None), the role and usage events are not tokens"
    assert math.isclose(r.done, 10.34) and r.text == "abc"
    assert (r.prompt_tokens, r.completion_tokens) == (7, 3), "tokens from the usage event"
    s = day.latency_stats([r], [7], 1.0)
    assert math.isclose(s.ttft_p50, 0.26), f"TTFT {s.ttft_p50}: to the first token, not to the headers (0.01)"


@pytest.mark.parametrize("seed", range(4))
def test_timed_request_random_streams(day, seed):
    rng = random.Random(seed)
    clock = Clock(rng.uniform(0, 100))
    t0, events, times, texts = clock.t, [], [], []
    t = t0 + 0.02
    for i in range(rng.randint(1, 15)):
        if rng.random() < 0.2:
            d = rng.uniform(0, 0.05)
            events.append((d, Chunk(None, None, None, "r")))
            t += d
        d = rng.uniform(0.001, 0.3)
        t += d
        piece = rng.choice(["", "a", "bc", " día"])
        events.append((d, Chunk(piece, None, None, "r")))
        times.append(t)
        texts.append(piece)
    events[-1] = (events[-1][0], Chunk(events[-1][1].text, "stop", None, "r"))
    r = timed(day, clock, fake_open(clock, events, headers_after=0.02))
    assert r.ok and np.allclose(r.chunks, times) and r.text == "".join(t for t in texts)
    assert r.prompt_tokens is None and r.completion_tokens == len(times), \
        "no usage event: completion_tokens counts the token events"


class FakeAPIError(Exception):
    pass


def test_timed_request_errors_are_failed_records(day):
    clock = Clock()
    r = timed(day, clock, fake_open(clock, [], open_error=FakeAPIError("Error code: 401 - bad key\nmore")))
    assert not r.ok and "FakeAPIError" in r.error and "401" in r.error and "\n" not in r.error, \
        f"an error at open: a failed record naming it in one line, got {r.error!r}"
    events = [(0.1, Chunk("a", None, None, "x")), (0.1, Chunk("b", None, None, "x")),
              (0.1, ConnectionResetError("peer closed"))]
    r = timed(day, clock, fake_open(clock, events))
    assert not r.ok and "ConnectionResetError" in r.error, f"an error mid-stream: failed, got {r.error!r}"
    events = [(0.1, Chunk("a", None, None, "x")), (0.1, Chunk("b", None, None, "x"))]
    r = timed(day, clock, fake_open(clock, events))
    assert not r.ok and r.error, "a stream that ends without a finish_reason is cut short: failed"
    r = timed(day, clock, fake_open(clock, [(0.1, asyncio.TimeoutError())]))
    assert not r.ok and "TimeoutError" in r.error


def test_timed_request_lets_cancellation_through(day):
    """Ctrl-C cancels the requests in flight: that is not a failed request, it stops the run."""
    async def run():
        never = asyncio.Event()

        async def open_stream(request):
            await never.wait()
        task = asyncio.create_task(day.timed_request(open_stream, Request(1, "p", 3)))
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run_async(run())


# ---- drive -----------------------------------------------------------------------------------------
async def settle_loop(rounds=40):
    for _ in range(rounds):
        await asyncio.sleep(0)


async def released_one_by_one(day, n, c, rng, fail=(), cancel_after=None):
    """drive() over n requests at concurrency c against a fake server whose requests end when this
    test says, one at a time in random order; after each, exactly min(c, left) must be in flight."""
    reqs = [Request(i, f"p{i}", 4) for i in range(n)]
    in_flight, sent, most = {}, [], [0]

    async def send(req):
        ev, call = asyncio.Event(), len(sent)        # one entry per call: a request sent twice counts twice
        in_flight[call] = ev
        sent.append(req.id)
        most[0] = max(most[0], len(in_flight))
        try:
            await ev.wait()
        finally:
            in_flight.pop(call)
        if req.id in fail:
            raise FakeAPIError(f"Error code: 503 - busy {req.id}")
        return Record(req.id, sent=0.0, chunks=[0.5], done=1.0, completion_tokens=1, finish_reason="length")

    records = []
    task = asyncio.create_task(day.drive(reqs, c, send, records))
    finished = 0
    while True:
        await settle_loop()
        if task.done():
            break
        assert len(in_flight) == min(c, n - finished), \
            f"concurrency {c}, {n - finished} requests left: {len(in_flight)} in flight " \
            f"(want exactly {min(c, n - finished)})"
        if cancel_after is not None and finished == cancel_after:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return reqs, sent, records, most[0], None
        rng.choice(list(in_flight.values())).set()
        finished += 1
    return reqs, sent, records, most[0], task.result()


@pytest.mark.parametrize("n,c", [(10, 1), (12, 3), (7, 7), (5, 8), (40, 16), (1, 4), (0, 3), (33, 5)])
def test_drive_keeps_exactly_c_in_flight(day, n, c):
    rng = random.Random(n * 100 + c)
    fail = set(rng.sample(range(n), n // 4)) if n else set()
    reqs, sent, records, most, out = run_async(released_one_by_one(day, n, c, rng, fail))
    assert most <= c, f"concurrency {c}: {most} were in flight at once"
    assert sent == [r.id for r in reqs], f"each request sent once, in order: sent {sent}"
    assert out is records, "drive fills and returns the list it was given"
    assert sorted(r.id for r in records) == list(range(n)), "one record per request, none dropped"
    for r in records:
        assert r.ok == (r.id not in fail), f"request {r.id}: a send that raises is a failed record"
        if r.id in fail:
            assert "503" in r.error and "\n" not in r.error


def test_drive_keeps_what_finished_when_cancelled(day):
    reqs, sent, records, most, _ = run_async(released_one_by_one(day, 20, 3, random.Random(1), cancel_after=5))
    assert len(records) == 5 and len(sent) == 8, \
        f"Ctrl-C after 5 of 20: the 5 finished records stay in the list ({len(records)}), 3 were in flight"


def test_drive_with_real_waits(day):
    """Random sleeps in flight: every request sent once, never more than C at once."""
    async def run():
        rng, live, most, seen = random.Random(3), [0], [0], []

        async def send(req):
            live[0] += 1
            most[0] = max(most[0], live[0])
            seen.append(req.id)
            await asyncio.sleep(rng.uniform(0, 0.004))
            live[0] -= 1
            return Record(req.id, sent=0.0, finish_reason="stop")
        out = await day.drive([Request(i, "p", 1) for i in range(60)], 6, send)
        return out, most[0], seen
    out, most, seen = run_async(run())
    assert most == 6 and sorted(seen) == list(range(60)) and len(out) == 60


def test_drive_bad_concurrency_is_one_line(day):
    async def send(req):
        return Record(req.id, sent=0.0)
    for c in (0, -2, True, 1.5, "4"):
        with pytest.raises(ValueError) as e:
            run_async(day.drive([Request(0, "p", 1)], c, send))
        assert "\n" not in str(e.value)


# ---- end to end: a real server ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tinyinfer serve` in a child process on 127.0.0.1 (the solutions' server: what is measured
    here is the load test); its log goes to a file (a pipe nobody reads would stall it)."""

    def __init__(self, model: str, log: Path, *flags, track="solutions", limit=180.0):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", "--model", model, "--track",
                                      track, "--port", str(self.port), "--api-key", KEY, *flags],
                                     cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while True:
            assert self.proc.poll() is None, f"the server exited:\n{self.tail()}"
            assert time.monotonic() - t0 < limit, f"the server did not answer in {limit:.0f} s:\n{self.tail()}"
            try:
                r = httpx.get(self.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stats(self) -> dict:
        r = httpx.get(self.url + "/v1/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_idle(self, limit=60.0) -> dict:
        t0 = time.monotonic()
        while True:
            s = self.stats()
            if s["pending"] == 0 and s["free_blocks"] == s["total_blocks"] or time.monotonic() - t0 > limit:
                return s
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server("tiny", tmp_path_factory.mktemp("serve") / "serve.log", "--max-num-seqs", "4", "--max-len", "128",
               "--max-pending", "6", "--prefix-cache")
    yield s
    s.stop()


def quiet(*args, **kw):
    pass


def test_stats_endpoint(server):
    s = server.stats()
    for k in ("free_blocks", "total_blocks", "running", "waiting", "pending", "max_pending", "cached_tokens"):
        assert isinstance(s[k], int), f"/v1/stats: {k} is a count, got {s.get(k)!r}"
    assert s["prefix_cache"] is True and s["max_pending"] == 6 and s["max_num_seqs"] == 4
    r = httpx.get(server.url + "/v1/stats", timeout=10)
    assert r.status_code == 401, "/v1/stats needs the key like every other route"


def test_end_to_end_with_your_functions(day, server):
    """Two levels through your drive / timed_request / latency_stats against the real server."""
    from shared import loadtest
    cfg = loadtest.Config(url=server.url + "/v1", levels=(1, 4), requests=6, max_tokens=5, prompt_lengths=(2, 5),
                          shared_prefix=6, seed=3, api_key=KEY, warmup=0)
    before = server.wait_idle()
    report = limited(lambda: loadtest.run(cfg, ops=day, progress=False, log=quiet), 180)
    assert not report["interrupted"] and [e["concurrency"] for e in report["levels"]] == [1, 4]
    ids = set()
    for e in report["levels"]:
        s, pool, c = e["stats"], e["pool_after"], e["concurrency"]
        assert (s["requests"], s["ok"], s["failed"], s["lost"], s["duplicated"]) == (6, 6, 0, 0, 0), \
            f"C={c}: {s}\n{s['errors']}"
        assert pool["settled"] and pool["free_blocks"] == pool["total_blocks"], f"C={c}: the pool after: {pool}"
        recs = [Record(**r) for r in e["records"]]
        assert len({r.response_id for r in recs}) == 6 and not ids & {r.id for r in recs}, \
            "every request its own id and its own response"
        ids |= {r.id for r in recs}
        for r in recs:
            assert r.completion_tokens == 5 and len(r.chunks) == 5, "ignore_eos: max_tokens tokens, one event each"
            assert r.sent <= r.headers <= r.chunks[0] and r.chunks == sorted(r.chunks) and r.chunks[-1] <= r.done
        assert s["ttft_p50"] > 0 and s["itl_p50"] > 0 and s["output_tok_s"] > 0
    assert sum(e["cached_tokens"] for e in report["levels"]) > 0, \
        "a shared prefix on a server with --prefix-cache: its blocks are found in the cache"
    assert before["free_blocks"] == before["total_blocks"]


def run_cli(argv, capsys):
    from shared import cli
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_command_reports_your_stats_of_its_records(day, track, server, tmp_path, capsys):
    """`tinyinfer loadtest` (the track's day 53: the reference until yours passes) writes the table,
    the JSON and two plots; each level's numbers are your latency_stats of its own records."""
    argv = ["loadtest", "--url", server.url, "--concurrency", "1,3", "--requests", "5", "--max-tokens", "4",
            "--prompt-lengths", "3", "--seed", "1", "--api-key", KEY, "--warmup", "2", "--out", str(tmp_path),
            "--track", track]
    rc, out, err = run_cli(argv, capsys)
    assert rc == 0, f"exit {rc}:\n{err[-2000:]}"
    for name in ("loadtest.json", "loadtest.md", "throughput_vs_concurrency.png", "latency_vs_concurrency.png"):
        assert (tmp_path / name).stat().st_size > 0, f"{name} missing"
    md = (tmp_path / "loadtest.md").read_text()
    for col in ("| C |", "ok", "lost", "duplicated", "output tok/s", "req/s", "TTFT p99 ms", "ITL p50 ms",
                "pool after"):
        assert col in md, f"loadtest.md's table has no {col!r} column"
    report = json.loads((tmp_path / "loadtest.json").read_text())
    for e in report["levels"]:
        recs = [Record(**r) for r in e["records"]]
        mine = asdict(day.latency_stats(recs, [r.id for r in recs], e["stats"]["seconds"]))
        for k, v in e["stats"].items():
            assert close(mine[k], v) if isinstance(v, float) or v is None else mine[k] == v, \
                f"C={e['concurrency']}: the report's {k} is {v}, your latency_stats of its records gives {mine[k]}"
        assert e["stats"]["ok"] == 5 and e["pool_after"]["settled"]


def test_prompts_are_seeded(day):
    from shared import loadtest
    cfg = loadtest.Config(url="http://x/v1", levels=(2,), requests=4, prompt_lengths=(3, 9), shared_prefix=5, seed=9)
    a, b = loadtest.make_requests(cfg, 4, 0, "level/2"), loadtest.make_requests(cfg, 4, 0, "level/2")
    assert a == b, "the same seed and flags: the same prompts"
    other = loadtest.make_requests(loadtest.Config(**{**cfg.__dict__, "seed": 10}), 4, 0, "level/2")
    assert [r.prompt for r in other] != [r.prompt for r in a]
    assert all(f"request {r.id}:" in r.prompt for r in a) and len({r.system for r in a}) == 1


def test_a_level_over_max_pending_reports_the_refusals(track, server, tmp_path, capsys):
    """8 in flight at a server that takes 6: the refused requests (503) are failed, reported, not lost.
    (90 tokens a request: the first 6 are still running when the other 2 arrive, even on a GPU.)"""
    argv = ["loadtest", "--url", server.url, "--concurrency", "8", "--requests", "16", "--max-tokens", "90",
            "--prompt-lengths", "2", "--api-key", KEY, "--warmup", "0", "--out", str(tmp_path), "--track", track]
    rc, out, err = run_cli(argv, capsys)
    report = json.loads((tmp_path / "loadtest.json").read_text())
    s = report["levels"][0]["stats"]
    assert s["ok"] + s["failed"] == 16 and s["lost"] == 0 and s["duplicated"] == 0, s
    assert s["failed"] >= 1 and any("503" in m for m in s["errors"]), \
        f"8 requests at once over max_pending 6: some must be refused (503) and reported, got {s['errors']}"
    assert rc == 1 and "failed" in err, "failed requests: exit 1 and a line that says so"
    assert "max_pending" in err, "the note that the level is over the server's max_pending"
    assert report["levels"][0]["pool_after"]["settled"]


BAD = [("unreachable", ["--url", "http://127.0.0.1:{closed}"]), ("wrong key", ["--api-key", "sk-wrong"]),
       ("no key", []), ("letters", ["--concurrency", "1,x"]), ("zero", ["--concurrency", "0"]),
       ("negative", ["--concurrency", "4,-2"]), ("empty", ["--concurrency", ","]), ("no requests", ["--requests", "0"]),
       ("ftp", ["--url", "ftp://127.0.0.1"])]


@pytest.mark.parametrize("what,flags", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(server, what, flags, tmp_path, capsys):
    flags = [f.format(closed=free_port()) for f in flags]
    key = [] if what in ("wrong key", "no key") else ["--api-key", KEY]
    rc, out, err = run_cli(["loadtest", "--url", server.url, *key, "--warmup", "0", "--out", str(tmp_path), *flags],
                           capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("tinyinfer: error:"), \
        f"{what}: one line and exit 2, got exit {rc}:\n{err}"
    assert not (tmp_path / "loadtest.json").exists(), f"{what}: refused before any load"


def test_ctrl_c_writes_what_was_measured(track, server, tmp_path):
    """SIGINT mid-level: exit 130, the report written with the partial level (what was in flight is
    stopped, not lost), and the server aborts the stopped requests: its pool is full again."""
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from shared.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["loadtest", "--url", server.url, "--concurrency", "2", "--requests", "500", "--max-tokens", "60",
            "--prompt-lengths", "2", "--api-key", KEY, "--warmup", "0", "--out", str(tmp_path), "--track", track]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        t0 = time.monotonic()
        while server.stats()["pending"] < 2:          # both clients have a request in the server
            assert proc.poll() is None and time.monotonic() - t0 < 120, "the load test did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"Ctrl-C: exit 130, got {proc.returncode}:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    report = json.loads((tmp_path / "loadtest.json").read_text())
    assert report["interrupted"] and len(report["levels"]) == 1
    e = report["levels"][0]
    s = e["stats"]
    assert e["interrupted"]["in_flight"] <= 2 and e["interrupted"]["not_sent"] > 0
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["ok"] + s["failed"] == len(e["records"]), s
    assert s["ok"] + e["interrupted"]["in_flight"] + e["interrupted"]["not_sent"] == 500
    assert "Interrupted" in (tmp_path / "loadtest.md").read_text()
    after = server.wait_idle()
    assert after["free_blocks"] == after["total_blocks"] and after["pending"] == 0, \
        f"after Ctrl-C the server got every block back: {after}"


# ---- GPU -------------------------------------------------------------------------------------------
TTFT_GOAL, TTFT_FLOOR = 3.0, 1.5          # issue 18: TTFT p50 >= 3x lower with the prefix cache (shared prefix)
SAME_GOAL, SAME_FLOOR = 0.9, 0.8          # and, with nothing shared, throughput within 10% of the cache off
BATCH_FLOOR = 2.0                         # the best level makes at least 2x the tok/s of one request at a time


def level_summary(e):
    s = e["stats"]
    out = {"concurrency": e["concurrency"], **{k: s[k] for k in ("requests", "ok", "failed", "lost", "duplicated")},
           "output_tok_s": round(s["output_tok_s"], 1), "req_s": round(s["req_s"], 2)}
    for k in ("ttft", "itl"):
        for p in PCTS:
            v = s[f"{k}_p{p}"]
            out[f"{k}_p{p}_ms"] = None if v is None else round(v * 1e3, 2)
    pool = e["pool_after"]
    out["pool_after"] = None if pool is None else f"{pool['free_blocks']}/{pool['total_blocks']}"
    return out


def sweep(day, track, model, tmp_path, *, flags, levels, requests=None, max_tokens=64, prompt_lengths=(32, 128)):
    """A server of `model` with `flags`, the load test at each level through the day's functions."""
    from shared import loadtest
    srv = Server(model, tmp_path / "serve_sweep.log", *flags, track=track)
    try:
        cfg = loadtest.Config(url=srv.url + "/v1", levels=tuple(levels), requests=requests, max_tokens=max_tokens,
                              prompt_lengths=tuple(prompt_lengths), api_key=KEY, seed=53)
        return loadtest.run(cfg, ops=day, progress=False, log=quiet)
    finally:
        srv.stop()


def check_sweep(report) -> dict:
    """Nothing failed, lost or duplicated at any level, the pool full after each, p99 TTFT there."""
    for e in report["levels"]:
        s = e["stats"]
        assert s["failed"] == s["lost"] == s["duplicated"] == 0, f"C={e['concurrency']}: {s['errors']}"
        assert e["pool_after"]["settled"], f"C={e['concurrency']}: the pool was not full after: {e['pool_after']}"
        assert s["ttft_p99"] is not None
    one = report["levels"][0]["stats"]["output_tok_s"]
    best = max(e["stats"]["output_tok_s"] for e in report["levels"])
    return {"levels": [level_summary(e) for e in report["levels"]], "best_vs_first_level": round(best / one, 2),
            "server": report["meta"]["server"]}


def prefix_comparison(day, track, model, tmp_path, *, flags, concurrency=16, requests=64, shared_prefix=1000,
                      prompt_words=32, plain_words=128) -> dict:
    """TTFT p50 with a shared prefix, and tok/s with nothing shared (twice the requests: a short run's
    tok/s varied widely between two H100 calls, notes/bench/h100_session9), on a server without and
    with --prefix-cache (the same prompts, the same seed)."""
    from shared import loadtest
    out = {}
    for cache in (False, True):
        srv = Server(model, tmp_path / f"serve_cache_{cache}.log", *flags, *(["--prefix-cache"] if cache else []),
                     track=track)
        try:
            base = dict(url=srv.url + "/v1", levels=(concurrency,), requests=requests, api_key=KEY, seed=5)
            shared = loadtest.run(loadtest.Config(**base, max_tokens=32, prompt_lengths=(prompt_words,),
                                                  shared_prefix=shared_prefix), ops=day, progress=False, log=quiet)
            plain = loadtest.run(loadtest.Config(**{**base, "requests": 2 * requests}, max_tokens=64,
                                                 prompt_lengths=(plain_words,)),      # longer: tok/s steadier
                                 ops=day, progress=False, log=quiet)
        finally:
            srv.stop()
        for name, rep in (("shared", shared), ("plain", plain)):
            s = rep["levels"][0]["stats"]
            assert s["failed"] == s["lost"] == s["duplicated"] == 0, f"cache {cache}, {name}: {s['errors']}"
        out["on" if cache else "off"] = {
            "shared_ttft_p50_ms": shared["levels"][0]["stats"]["ttft_p50"] * 1e3,
            "shared_prompt_tokens": shared["levels"][0]["prompt_tokens_mean"],
            "shared_cached_tokens": shared["levels"][0]["cached_tokens"],
            "plain_tok_s": plain["levels"][0]["stats"]["output_tok_s"],
            "plain_cached_tokens": plain["levels"][0]["cached_tokens"]}
    out["ttft_p50_off_over_on"] = out["off"]["shared_ttft_p50_ms"] / out["on"]["shared_ttft_p50_ms"]
    out["plain_tok_s_on_over_off"] = out["on"]["plain_tok_s"] / out["off"]["plain_tok_s"]
    return out


@pytest.mark.bench
@pytest.mark.model
def test_bench_smollm2_under_load(day, track, smollm2, tmp_path):
    """SmolLM2 (fp16, graphs) behind `tinyinfer serve --max-num-seqs 128`; concurrency 1, 8, 32, 128
    (max(16, 4C) requests each, 64 new tokens, prompts of 32/128 words) after a warm-up at 128:
    nothing failed, lost or duplicated, the pool full after every level, p99 TTFT recorded; the
    best level makes at least BATCH_FLOOR x the tok/s of concurrency 1."""
    from shared import loadtest
    from shared.course.testing import record_bench
    report = sweep(day, track, str(smollm2), tmp_path, flags=("--max-num-seqs", "128", "--max-len", "512"),
                   levels=(1, 8, 32, 128))
    loadtest.write(report, REPO / "build" / "bench" / "day_53_loadtest")
    result = check_sweep(report)
    record_bench("day_53_loadtest_smollm2", result)
    assert result["best_vs_first_level"] >= BATCH_FLOOR, \
        f"the best level makes {result['best_vs_first_level']}x the tok/s of concurrency 1"


@pytest.mark.bench
@pytest.mark.model
def test_bench_prefix_cache_ttft(day, track, smollm2, tmp_path):
    """A shared 1,000-word prefix (about 1,000 SmolLM2 tokens) at concurrency 16: TTFT p50 with the
    prefix cache on vs off (goal 3x lower); prompts with nothing shared: tok/s on vs off (goal
    within 10%). Recorded; fails under the floors."""
    from shared.course.testing import record_bench
    out = prefix_comparison(day, track, str(smollm2), tmp_path, flags=("--max-num-seqs", "32", "--max-len", "2048"))
    record_bench("day_53_prefix_cache_smollm2", {**out, "goals": {"ttft": TTFT_GOAL, "plain": SAME_GOAL}})
    assert out["ttft_p50_off_over_on"] >= TTFT_FLOOR, \
        f"a shared prefix: TTFT p50 only {out['ttft_p50_off_over_on']:.2f}x lower with the prefix cache"
    assert out["plain_tok_s_on_over_off"] >= SAME_FLOOR, \
        f"nothing shared: the prefix cache costs {100 * (1 - out['plain_tok_s_on_over_off']):.0f}% of the tok/s"
