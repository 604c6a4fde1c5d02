"""Day 21 checker: stream (UTF-8-safe pieces with timestamps) and summary (TTFT, ITL). Run: pytest checkers/day_21"""
import math

import numpy as np
import pytest

from shared import reference
from shared.reference.streaming import StreamEvent

TEXTS = ["plain ascii, nothing special", "héllo wörld, naïve café", "世界 🙂 ok", "🙂🙃 ∑ x² — ß"]


@pytest.fixture(scope="module")
def tok(tiny_model):
    """The tiny model's byte-level tokenizer: one token per UTF-8 byte, so é is two tokens, 🙂 four."""
    return reference.Tokenizer(tiny_model)


class FakeClock:
    """A clock the test moves by hand: t is exact, no sleeping, no wall-clock asserts."""

    def __init__(self, start=100.0):
        self.now = start

    def __call__(self):
        return self.now


@pytest.mark.parametrize("text", TEXTS, ids=["ascii", "latin1", "cjk_emoji", "math"])
def test_streamed_text_equals_decoding_all_ids(day, tok, text):
    ids = tok.encode(text) + tok.eos_token_ids          # a special token at the end streams no text
    events = list(day.stream(ids, tok))
    got = "".join(e.text for e in events)
    assert got == tok.decode(ids), f"streamed text {got!r} != tokenizer.decode(all ids) {tok.decode(ids)!r}"
    for e in events:
        assert e.text, "an event with empty text: skip ids that complete no text yet"
        assert "\ufffd" not in e.text, f"piece {e.text!r} has U+FFFD: use tokenizer.detokenizer(), it holds back " \
                                       "half a UTF-8 character"
    it = iter(ids)
    assert all(e.token_id in it for e in events), "event token_ids must be the stream's ids, in order"


def test_a_character_appears_once_complete_with_its_last_token(day, tok):
    ids = tok.encode("a🙂b")
    assert len(ids) == 6, "the tiny tokenizer should give one id per byte"
    events = list(day.stream(ids, tok))
    assert [e.text for e in events] == ["a", "🙂", "b"], f"pieces {[e.text for e in events]}"
    assert [e.token_id for e in events] == [ids[0], ids[4], ids[5]], \
        "the emoji's event belongs to the id that completed it (its 4th byte)"


def test_ids_are_pulled_lazily_and_stamped_when_they_arrive(day, tok):
    """Feed a generator that advances a fake clock 0.25 s per id: t must be when each piece became final."""
    clock = FakeClock(start=100.0)
    ids = tok.encode("hé!")     # h, two bytes of é, !

    def slow_ids():
        for i in ids:
            clock.now += 0.25
            yield i

    events = list(day.stream(slow_ids(), tok, clock=clock))
    assert [e.text for e in events] == ["h", "é", "!"]
    got = [e.t for e in events]
    assert got == pytest.approx([0.25, 0.75, 1.0]), (
        f"timestamps {got}: t is seconds since the stream started (subtract the start time), taken when "
        "each piece is yielded -- do not list() the ids first")


def test_empty_input_gives_no_events(day, tok):
    assert list(day.stream(iter([]), tok, clock=FakeClock())) == []


def test_timestamps_are_monotonic_with_a_real_engine(day, tiny_model, track):
    from shared.engine import Engine
    engine = Engine(str(tiny_model), track=track)
    made = []

    def record(gen):
        for t in gen:
            made.append(t)
            yield t

    events = list(day.stream(record(engine.generate_ids(engine.prompt_ids("Hello"), max_new_tokens=16)),
                             engine.tokenizer))
    ts = [e.t for e in events]
    assert all(t >= 0 for t in ts) and ts == sorted(ts), f"timestamps must start at >= 0 and never go back: {ts}"
    assert "".join(e.text for e in events) == engine.tokenizer.decode(made)


# ---- summary ------------------------------------------------------------------------------------------
def _events(times):
    return [StreamEvent("x", 65, t) for t in times]


def test_summary_on_hand_built_events(day):
    # gaps 0.1, 0.2, 0.1, 0.5 -> sorted 0.1 0.1 0.2 0.5; p50 halfway between 0.1 and 0.2; p90 at rank 2.7
    s = day.summary(_events([0.5, 0.6, 0.8, 0.9, 1.4]))
    assert s.ttft_s == pytest.approx(0.5), "TTFT is the time of the first piece"
    assert s.itl_mean_s == pytest.approx(0.225), "mean inter-token latency: mean gap between consecutive pieces"
    assert s.itl_p50_s == pytest.approx(0.15), "p50 of the gaps (linear interpolation, like numpy.percentile)"
    assert s.itl_p90_s == pytest.approx(0.41), "p90 of the gaps (linear interpolation, like numpy.percentile)"
    assert s.total_s == pytest.approx(1.4) and s.events == 5


def test_summary_matches_numpy_on_random_events(day):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.exponential(0.02, size=37)) + 0.3
    s = day.summary(_events(times.tolist()))
    gaps = np.diff(times)
    assert s.ttft_s == pytest.approx(times[0])
    assert s.itl_mean_s == pytest.approx(gaps.mean())
    assert s.itl_p50_s == pytest.approx(np.percentile(gaps, 50)), "p50 must match numpy.percentile(gaps, 50)"
    assert s.itl_p90_s == pytest.approx(np.percentile(gaps, 90)), "p90 must match numpy.percentile(gaps, 90)"


def test_summary_edge_cases(day):
    one = day.summary(_events([0.7]))
    assert one.ttft_s == pytest.approx(0.7) and one.events == 1
    assert (one.itl_mean_s, one.itl_p50_s, one.itl_p90_s) == (0.0, 0.0, 0.0), "no gaps: ITL fields are 0.0"
    assert all(math.isfinite(x) for x in (one.itl_mean_s, one.itl_p50_s, one.itl_p90_s))
    with pytest.raises(ValueError):
        day.summary([])
