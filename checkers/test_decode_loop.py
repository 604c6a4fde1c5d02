"""The device-fed decode loop (shared/engine/decode_loop.py) makes the same tokens as day 18's loop,
stops exactly where it should, and -- on a GPU -- never waits for the host between steps."""
import pytest
import torch


def _engine(tiny_model, track, **kw):
    from shared.engine import Engine
    return Engine(str(tiny_model), track=track, dtype="fp32", **kw)


def _both(tiny_model, track, ids, **kw):
    """(device-fed loop, day 18's loop) on the same engine settings."""
    fed = list(_engine(tiny_model, track, async_decode=True).generate_ids(ids, **kw))
    plain = list(_engine(tiny_model, track, async_decode=False).generate_ids(ids, **kw))
    return fed, plain


@pytest.mark.parametrize("ids", [[5, 70, 71, 72, 9], [200], list(range(40, 77))])
def test_greedy_tokens_equal_the_synchronous_loop(tiny_model, track, ids):
    fed, plain = _both(tiny_model, track, ids, max_new_tokens=13, ignore_eos=True)
    assert len(fed) == 13, f"asked for 13 tokens, the device-fed loop made {len(fed)}"
    assert fed == plain


def test_seeded_sampling_equals_the_synchronous_loop(tiny_model, track):
    """A seeded generator draws once per step in both loops: the same draws, the same tokens."""
    fed, plain = _both(tiny_model, track, [5, 70, 71], max_new_tokens=11, temperature=0.9, top_k=40, seed=3,
                       ignore_eos=True)
    assert fed == plain


@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_new_tokens_is_exact_for_short_runs(tiny_model, track, n):
    fed, plain = _both(tiny_model, track, [9, 8, 7], max_new_tokens=n, ignore_eos=True)
    assert fed == plain and len(fed) == n


@pytest.mark.parametrize("where", [0, 1, 4])
def test_stops_on_eos_exactly_there(tiny_model, track, where):
    """Make the greedy run's token number `where` an EOS id: the loop yields it and nothing after,
    although it had already queued the next step (whose token must be dropped)."""
    ids = [5, 70, 71, 72, 9]
    engine = _engine(tiny_model, track, async_decode=True)
    free_run = list(engine.generate_ids(ids, max_new_tokens=8, ignore_eos=True))
    stop = free_run[where]
    engine.tokenizer.eos_token_ids = [stop]
    out = list(engine.generate_ids(ids, max_new_tokens=8))
    first = free_run.index(stop)                  # an earlier equal token stops it there
    assert out == free_run[:first + 1]


def test_the_engine_uses_it_only_with_a_cache(tiny_model, track):
    engine = _engine(tiny_model, track, use_cache=False, async_decode=True)
    assert not engine.uses_async_loop(engine.runner(8)), "without a cache there is no step to feed"
    assert list(engine.generate_ids([5, 6], max_new_tokens=3, ignore_eos=True))


# ---- on the GPU: wall time per token is the GPU's, not the host's -------------------------------------
@pytest.mark.gpu
def test_graphed_loop_equals_eager_loop_token_for_token(tiny_model, track):
    from shared.engine import Engine
    ids = list(range(30, 61))
    graphed = Engine(str(tiny_model), track=track, dtype="fp16")
    eager = Engine(str(tiny_model), track=track, dtype="fp16", graphs=False, async_decode=False)
    if not graphed.use_graphs:
        pytest.skip("CUDA graphs are not on for this track (day 23 unfinished)")
    for kw in (dict(), dict(temperature=0.8, top_p=0.9, seed=1)):
        a = list(graphed.generate_ids(ids, max_new_tokens=40, ignore_eos=True, **kw))
        b = list(eager.generate_ids(ids, max_new_tokens=40, ignore_eos=True, **kw))
        assert a == b, kw


@pytest.mark.gpu
def test_steps_never_sync_with_the_host(tiny_model, track):
    """Between the first token and the last, nothing the loop enqueues may synchronise: torch's
    sync-debug mode raises on any blocking copy or read (the event waits are not torch syncs)."""
    from shared.engine import Engine
    from shared.engine.decode_loop import TokenReader
    engine = Engine(str(tiny_model), track=track, dtype="fp16")
    if not engine.use_graphs:
        pytest.skip("CUDA graphs are not on for this track (day 23 unfinished)")
    ids = list(range(10, 30))
    list(engine.generate_ids(ids, max_new_tokens=12, ignore_eos=True))       # capture outside the check
    pops = []
    real_pop = TokenReader.pop

    def pop(self, i):
        torch.cuda.set_sync_debug_mode("default")
        try:
            pops.append(i)
            return real_pop(self, i)
        finally:
            torch.cuda.set_sync_debug_mode("error")
    it = engine.generate_ids(ids, max_new_tokens=12, ignore_eos=True)
    first = next(it)                                  # the prompt: one read is allowed there
    TokenReader.pop = pop
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        TokenReader.pop = real_pop
    assert len(rest) == 11 and first is not None and pops == list(range(1, 12))
