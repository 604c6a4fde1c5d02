"""Day 33 checker: the verify pass -- K + 1 tokens in one forward on the cache. Run: pytest checkers/day_33

The oracle is the engine's own decode step: K + 1 sequential steps on a static cache give K + 1
rows of logits, and one verify of the same tokens must give the same rows (argmax exactly, fp32
logits within 1e-4), for K in {1, 2, 4, 7}, on the static cache and the paged cache (blocks
scattered over the pool). After a verify the cache holds start + K + 1 tokens, the same K/V a
decode would hold, and decoding goes on from there. Sim tier: the tiny model with the reference
kernels (fast in the simulator) and YOUR Verifier, with every host read made to raise. GPU:
the track's kernels, SmolLM2, graph == eager, no sync, and the cost of T = K + 1 vs T = 1.
"""
import pytest
import torch

from shared import reference
from shared.course.registry import Ops
from shared.course.testing import assert_close, cuda_time_ms, no_host_reads, poison_, record_bench
from shared.engine.attention import NoCache, StaticCache
from shared.engine.runner import ModelRunner

KS = [1, 2, 4, 7]
KINDS = ["static", "paged"]
PROMPT = [72, 101, 108, 108, 111, 44, 32, 118, 101, 114, 105, 102, 121]   # 13 tokens


@pytest.fixture(scope="module")
def vops(ops, sizes):
    """In the simulator: reference kernels and the reference PagedCache (a simulated GEMV of every
    weight takes minutes). On a GPU: every component from the track."""
    return Ops(ops.track, overrides=sizes(tiny={n: getattr(reference, n) for n in reference.__all__}, real={}))


@pytest.fixture(scope="module")
def weights(tiny_model, device):
    w = reference.load_model(tiny_model, dtype=torch.float32, device=device)
    w.inv_freq = reference.rope_frequencies(w.config).to(device)
    return w


def make_runner(kind, ops, w, device, dtype=torch.float32, max_len=64, block_size=5):
    if kind == "static":
        backend = StaticCache(ops, w.config, max_len, dtype, device)
    else:
        backend = ops.PagedCache(ops, w.config, 3 * -(-max_len // block_size), block_size, dtype, device)
        poison_(backend.k), poison_(backend.v)              # a slot read before it was written shows as NaN
    return ModelRunner(ops, w, backend, device)


def scatter(runner, tag):
    """Another sequence takes a block, so sequence 0's next block is not the one after its last."""
    if hasattr(runner.backend, "allocator"):
        runner.backend.allocator.allocate(f"other-{tag}", 1)


def prefill(runner, prompt):
    """The prompt through the runner (next_logits: a prefill, runner.cached = len(prompt))."""
    scatter(runner, "prefill")
    return runner.next_logits(prompt)


def sequential(oracle, context, tokens):
    """Rows of K + 1 decode steps on the oracle's cache (which holds context): row i = logits
    after tokens[i]."""
    rows = []
    for i in range(len(tokens)):
        rows.append(oracle.next_logits(context + tokens[:i + 1]).float().clone())
    return torch.stack(rows)


def drafts(K, seed, vocab):
    g = torch.Generator().manual_seed(seed)
    return [int(t) for t in torch.randint(0, vocab, (K,), generator=g)]


def assert_rows_equal(got, want, what, atol=1e-4):
    T, V = want.shape
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (T, V), \
        f"{what}: verify must return the logits of all {T} tokens, [{T}, {V}], got " \
        f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}"
    assert got.dtype == torch.float32, f"{what}: fp32 logits expected, got {got.dtype}"
    rows = [i for i in range(T) if int(got[i].argmax()) != int(want[i].argmax())]
    assert not rows, (f"{what}: the argmax of rows {rows} differs from the decode steps' "
                      f"(got {[int(got[i].argmax()) for i in rows]}, expected {[int(want[i].argmax()) for i in rows]}); "
                      "row i must be the logits after tokens[i], at position start + i")
    assert_close(got, want, f"{what}: logits vs {T} sequential decode steps", atol=atol, rtol=atol)


def cached_kv(backend, layer, n):
    """Keys and values of positions 0..n-1 of one layer, [n, KV, hd], read from either cache."""
    if hasattr(backend, "block_tables"):
        table = backend.allocator.block_table(0)
        bs = backend.block_size
        slots = [table[p // bs] * bs + p % bs for p in range(n)]
        blocks, offs = torch.tensor([s // bs for s in slots]), torch.tensor([s % bs for s in slots])
        return backend.k[layer][blocks, :, offs], backend.v[layer][blocks, :, offs]
    return backend.kv.k[layer][:, :n].transpose(0, 1), backend.kv.v[layer][:, :n].transpose(0, 1)


def cache_length(backend):
    if hasattr(backend, "block_tables"):
        return backend.allocator.length(0), int(backend.context_lens[0])
    return backend.kv.length, int(backend.cache_len[0])


# ---- the verify pass == K + 1 decode steps -------------------------------------------------------------
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("kind", KINDS)
def test_verify_equals_k_plus_1_decode_steps(day, vops, weights, device, kind, K):
    """Row by row; then the cache holds start + K + 1 tokens -- the K/V the decode steps wrote --
    and the next decode step after the verify equals the oracle's."""
    oracle = make_runner("static", vops, weights, device)
    runner = make_runner(kind, vops, weights, device)
    first = prefill(oracle, PROMPT).argmax()
    prefill(runner, PROMPT)
    start = len(PROMPT)
    tokens = [int(first)] + drafts(K, seed=K, vocab=weights.config.vocab_size)
    want = sequential(oracle, PROMPT, tokens)
    scatter(runner, "verify")
    got = day.verify(runner, tokens, start)
    assert_rows_equal(got, want, f"verify of K={K} drafts on the {kind} cache at start {start}")
    end = start + K + 1
    assert runner.cached == end, f"after a verify of {K + 1} tokens at {start}, runner.cached must be {end}, " \
                                 f"got {runner.cached}"
    held, on_device = cache_length(runner.backend)
    assert (held, on_device) == (end, end), (f"{kind} cache after verify: holds {held} tokens, device length "
                                             f"{on_device}; expected {end} (start + K + 1)")
    for layer in range(weights.config.num_layers):
        for name, a, b in zip("kv", cached_kv(runner.backend, layer, end), cached_kv(oracle.backend, layer, end)):
            assert_close(a, b, f"{name} cache of layer {layer}, positions 0..{end - 1}, after verify ({kind})",
                         atol=1e-5, rtol=1e-5)
    after = tokens + [int(want[-1].argmax())]
    assert_rows_equal(runner.next_logits(PROMPT + after)[None], oracle.next_logits(PROMPT + after)[None].float(),
                      f"the decode step after the verify ({kind})")


@pytest.mark.parametrize("kind", KINDS)
def test_verify_again_after_a_partial_accept(day, vops, weights, device, kind):
    """Day 35's loop: verify 5 tokens at s, accept 2 of them, verify 4 new ones at s + 2 -- over
    positions the first verify already wrote. Equal to decoding the accepted tokens, then the new."""
    oracle = make_runner("static", vops, weights, device)
    runner = make_runner(kind, vops, weights, device, block_size=4)
    first = int(prefill(runner, PROMPT).argmax())
    s, V = len(PROMPT), weights.config.vocab_size
    day.verify(runner, [first] + drafts(4, seed=11, vocab=V), s)
    kept = [first] + drafts(4, seed=11, vocab=V)[:1]
    new = drafts(4, seed=12, vocab=V)
    prefill(oracle, PROMPT + kept[:1])
    want = sequential(oracle, PROMPT + kept[:1], kept[1:] + new)[1:]
    got = day.verify(runner, new, s + 2)
    assert_rows_equal(got, want, f"a verify at {s + 2} after a verify of 5 tokens at {s} ({kind})")
    assert runner.cached == s + 2 + len(new) and cache_length(runner.backend)[0] >= s + 2 + len(new)


@pytest.mark.parametrize("kind", KINDS)
def test_one_verifier_many_steps_reads_nothing_back(day, vops, weights, device, tier, kind):
    """A Verifier used as day 35 will: every draft accepted, the next verify starts where the last
    ended, K changes from call to call, and (in the simulator) the graphs helper, which calls the
    step itself for the key (K + 1, bucket). Each call's rows equal the decode steps', and inside
    a call no value is read back from the device (what a CUDA graph capture forbids; on a GPU the
    graphs are checked by test_graph_equals_eager_and_never_syncs)."""
    oracle = make_runner("static", vops, weights, device)
    runner = make_runner(kind, vops, weights, device, max_len=48, block_size=3)
    verifier = day.Verifier(runner, max_k=7, graphs_cls=vops.DecodeGraphs if tier == "sim" else None)
    context = list(PROMPT[:6])
    nxt = int(prefill(runner, context).argmax())
    prefill(oracle, context)
    for step, K in enumerate([2, 7, 1, 4, 0, 3]):
        tokens = [nxt] + drafts(K, seed=40 + step, vocab=weights.config.vocab_size)
        want = sequential(oracle, context, tokens)
        scatter(runner, step)
        with no_host_reads():
            got = verifier(tokens, len(context))
        assert_rows_equal(got, want, f"verify {step} (K={K}, start {len(context)}, {kind})")
        context += tokens
        nxt = int(want[-1].argmax())


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_one_line_and_changes_nothing(day, vops, weights, device, kind):
    runner = make_runner(kind, vops, weights, device, max_len=16, block_size=4)
    prefill(runner, PROMPT)
    V, s = weights.config.vocab_size, len(PROMPT)
    verifier = day.Verifier(runner, max_k=3)
    before = cache_length(runner.backend)
    cases = [("no tokens", [], s), ("5 tokens for max_k=3", [1, 2, 3, 4, 5], s),
             ("start 0 (a prefill is not a verify)", [1, 2], 0),
             (f"start {s + 1}, past the {s} cached tokens", [1, 2], s + 1),
             (f"token id {V}", [1, V], s), ("token id -1", [-1, 2], s)]
    if kind == "static":
        cases.append(("positions 13..16 in a cache of 16", [1, 2, 3, 4], s))
    for what, tokens, start in cases:
        with pytest.raises(ValueError) as e:
            verifier(tokens, start)
        msg = str(e.value)
        assert msg and "\n" not in msg, f"{what}: one line, please: {msg!r}"
        assert cache_length(runner.backend) == before, \
            f"{what}: the cache changed ({before} -> {cache_length(runner.backend)}); check before prepare()"
        assert runner.cached == s, f"{what}: runner.cached changed to {runner.cached}: check before anything changes"
    with pytest.raises(ValueError):
        day.Verifier(runner, max_k=-1)
    with pytest.raises(ValueError):
        day.Verifier(ModelRunner(vops, weights, NoCache(vops), device))


# ---- GPU: graphs, no sync, SmolLM2, cost -------------------------------------------------------------
def _engine(path, track, dtype):
    from shared.engine import Engine
    return Engine(str(path), track=track, dtype=dtype, graphs=False, paged=False)


def _engine_runner(e, kind, max_len=1024, graphs=False):
    ops = e.ops
    if kind == "static":
        backend = StaticCache(ops, e.config, max_len, e.dtype, e.device)
    else:
        backend = ops.PagedCache(ops, e.config, max_len // 16, 16, e.dtype, e.device)
    return ModelRunner(ops, e.weights, backend, e.device, graphs_cls=ops.DecodeGraphs if graphs else None)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny_model", pytest.param("smollm2", marks=pytest.mark.model)])
@pytest.mark.parametrize("kind", KINDS)
def test_graph_equals_eager_and_never_syncs(day, track, request, model, kind):
    """The track's kernels, fp16: one Verifier replaying a graph per (K + 1, bucket) and one eager,
    the same verifies at moving starts (K 1, 2, 4, 7, and again): equal logits. Then a replay
    under torch.cuda.set_sync_debug_mode("error")."""
    e = _engine(request.getfixturevalue(model), track, "fp16")
    prompt = e.prompt_ids("The verify pass scores every drafted token in one forward of the target model.")
    runners = [_engine_runner(e, kind), _engine_runner(e, kind)]
    verifiers = [day.Verifier(runners[0], max_k=7), day.Verifier(runners[1], max_k=7, graphs_cls=e.ops.DecodeGraphs)]
    nxt = [int(r.next_logits(prompt).argmax()) for r in runners][0]
    start = len(prompt)
    for step, K in enumerate([1, 2, 4, 7, 4, 1, 7]):
        tokens = [nxt] + drafts(K, seed=step, vocab=e.config.vocab_size)
        eager, graphed = (v(tokens, start).clone() for v in verifiers)
        assert_close(graphed, eager, f"graphed vs eager verify {step} (K={K}, start {start}, {kind}, {model})",
                     atol=1e-3, rtol=1e-3)
        assert torch.equal(graphed.argmax(-1), eager.argmax(-1))
        start += K + 1
        nxt = int(eager[-1].argmax())
    assert verifiers[1].graphs.captures >= 4, "one graph per K + 1 (and bucket): K 1, 2, 4, 7 were used"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = verifiers[1]([nxt, 5, 6, 7, 8], start)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.model
@pytest.mark.parametrize("kind", KINDS)
def test_verify_equals_decode_steps_on_smollm2(day, track, smollm2, kind):
    """fp32, the track's kernels: a verify's rows have the argmax of K + 1 decode steps, for K
    1, 2, 4, 7, on a chat prompt (the decode steps' GEMV and the verify's skinny GEMM differ in
    summation order: logits close, argmax exact)."""
    e = _engine(smollm2, track, "fp32")
    prompt = e.prompt_ids("Summarize: the verify pass checks K drafted tokens at once.", chat=True)
    for K in KS:
        oracle, runner = _engine_runner(e, "static"), _engine_runner(e, kind)
        first = int(oracle.next_logits(prompt).argmax())
        runner.next_logits(prompt)
        tokens = [first] + drafts(K, seed=100 + K, vocab=e.config.vocab_size)
        want = sequential(oracle, prompt, tokens)
        assert_rows_equal(day.verify(runner, tokens, len(prompt)), want, f"SmolLM2 fp32, K={K}, {kind}", atol=2e-3)


@pytest.mark.gpu
@pytest.mark.bench
@pytest.mark.model
def test_bench_verify_vs_decode_step(day, track, smollm2):
    """Graph-replayed, fp16, SmolLM2, the static cache at ~500 tokens: ms per verify of K + 1 tokens
    vs ms per decode step, K 1, 2, 4, 7 (host preparation included: what the loop pays). A verify
    that costs K + 1 decode steps can never win, so that is the floor it fails below."""
    e = _engine(smollm2, track, "fp16")
    runner = _engine_runner(e, "static", graphs=True)
    verifier = day.Verifier(runner, max_k=7, graphs_cls=e.ops.DecodeGraphs)
    prompt = (e.prompt_ids("The history of computing is a story of layers built on layers. ") * 40)[:500]
    runner.next_logits(prompt)
    start = len(prompt)
    result = {"model": "SmolLM2-135M", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "context": start,
              **{f"{n}_from": e.ops.source(n).describe(track) for n in ("linear", "decode_attention", "forward")}}
    result["decode_ms"] = cuda_time_ms(lambda: runner.decode(17, start))
    for K in KS:
        tokens = [17] + drafts(K, seed=K, vocab=e.config.vocab_size)
        result[f"verify_k{K}_ms"] = cuda_time_ms(lambda: verifier(tokens, start))
        result[f"verify_k{K}_ratio"] = result[f"verify_k{K}_ms"] / result["decode_ms"]
    record_bench("day_33_verify_vs_decode", result)
    for K in KS:
        assert result[f"verify_k{K}_ratio"] < K + 1, (
            f"a verify of {K + 1} tokens costs {result[f'verify_k{K}_ratio']:.2f} decode steps: no faster than "
            "decoding them one by one")
