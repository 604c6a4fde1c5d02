"""Day 17 checker: sample (greedy argmax kernel; temperature, top-k, top-p). Run: pytest checkers/day_17"""

import pytest
import torch

from shared import reference
from shared.course.testing import cuda_time_ms, randn, record_bench

# Chi-square critical values at p = 0.001 by degrees of freedom (any statistics table):
# a correct sampler exceeds them once in a thousand seeds, a wrong distribution almost always.
CHI2_CRIT_P001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}

LAUNCHES = [dict(block_size=32), dict(block_size=64, lanes=8), dict(block_size=32, lanes=32)]
# several blocks per row: slices of `chunk` tokens, merged by a second launch (chunks that do not
# divide the vocab, more slices than the merge has lanes, and one lane per row)
SLICED = [dict(block_size=32, chunk=16), dict(block_size=64, lanes=8, chunk=50), dict(block_size=32, lanes=4, chunk=7),
          dict(block_size=32, lanes=1, chunk=3)]
SLICED_IDS = ["chunk16", "lanes8-chunk50", "lanes4-chunk7", "lanes1-chunk3"]


def check_tokens(got, expected, what):
    assert isinstance(got, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(got).__name__}"
    assert got.dtype == torch.int64, f"{what}: token ids must be int64, got {got.dtype}"
    assert tuple(got.shape) == tuple(expected.shape), f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    got, expected = got.cpu(), expected.cpu()
    bad = (got != expected).nonzero()
    if len(bad):
        i = tuple(int(j) for j in bad[0])
        raise AssertionError(f"{what}: {len(bad)} of {got.numel()} rows differ; first at row {i}: "
                             f"got token {int(got[i])}, expected {int(expected[i])}")


def distinct_logits(rows, vocab, seed, device):
    """Logits with no ties and gaps of 0.05, so tiny temperatures must pick the max."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=g).float() * 0.05 for _ in range(rows)]).to(device)


# ---- greedy: your argmax kernel vs torch.argmax ----------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("launch", LAUNCHES, ids=["auto32", "lanes8x8rows", "lanes32"])
def test_greedy_equals_torch_argmax(day, sizes, device, dtype, launch):
    """Random rows, some entries -inf, vocab sizes that are not multiples of the lanes."""
    for vocab in sizes(tiny=[1, 45, 200], real=[7, 49152, 50257, 128256]):
        x = randn(3, vocab, dtype=dtype, device=device, seed=vocab, scale=3.0)
        x[1, ::3] = float("-inf")
        got = day.sample(x, 0.0, **launch)
        check_tokens(got, torch.argmax(x.float(), dim=-1), f"greedy sample V={vocab} {dtype} {launch}")


@pytest.mark.parametrize("launch", LAUNCHES, ids=["auto32", "lanes8x8rows", "lanes32"])
def test_ties_go_to_the_lowest_index(day, device, launch):
    """The max appears twice; the lower index sits in a HIGHER lane (merging by lane order is wrong)."""
    vocab = 100
    x = randn(5, vocab, device=device, seed=7)
    for r, (lo, hi) in enumerate([(2, 33), (6, 37), (3, 64), (30, 31)]):
        x[r, lo] = x[r, hi] = 9.0
    x[4] = float("-inf")                           # all -inf: torch.argmax says 0
    check_tokens(day.sample(x, 0.0, **launch), torch.argmax(x, dim=-1), f"greedy ties {launch}")
    h = torch.zeros(2, 70, dtype=torch.float16, device=device)   # every entry tied
    check_tokens(day.sample(h, 0.0, **launch), torch.zeros(2, dtype=torch.int64), f"all-equal rows {launch}")


@pytest.mark.parametrize("launch", SLICED, ids=SLICED_IDS)
def test_greedy_over_many_blocks_equals_torch_argmax(day, sizes, device, launch):
    """The vocab cut into slices, one block each: random rows (some -inf), odd vocab sizes."""
    for vocab in sizes(tiny=[45, 203], real=[49152, 128257]):
        x = randn(3, vocab, device=device, seed=vocab + 1, scale=3.0)
        x[1, ::3] = float("-inf")
        x[2, : vocab // 2] = float("-inf")
        check_tokens(day.sample(x, 0.0, **launch), torch.argmax(x, dim=-1), f"greedy sample V={vocab} {launch}")


@pytest.mark.parametrize("launch", SLICED, ids=SLICED_IDS)
def test_ties_across_blocks_go_to_the_lowest_index(day, sizes, device, launch):
    """The max appears 2-3 times in DIFFERENT slices (lower index sometimes in a slice a later lane
    or a later step merges); a row whose only max is in the last, partial slice; a row whose max
    is the very last token; a row of all -inf (torch.argmax: 0); every entry tied (0)."""
    vocab = sizes(tiny=203, real=128257)
    g = torch.Generator().manual_seed(vocab + launch["chunk"])
    x = randn(9, vocab, device=device, seed=11)
    for r in range(5):
        spots = torch.randperm(vocab, generator=g)[: 2 + r % 2]
        x[r, spots] = 9.0
    x[5, vocab - 3] = 9.0                        # only in the last slice (vocab is not a multiple of chunk)
    x[6, vocab - 1] = 9.0
    x[7] = float("-inf")
    x[8] = 0.5
    check_tokens(day.sample(x, 0.0, **launch), torch.argmax(x, dim=-1), f"greedy ties across blocks {launch}")
    h = torch.zeros(2, 70, dtype=torch.float16, device=device)
    h[0, [5, 20, 40, 69]] = 1.0                  # four tied maxima in four slices of 16 (or 7, or 50)
    check_tokens(day.sample(h, 0.0, **launch), torch.tensor([5, 0]), f"fp16 ties across blocks {launch}")


def test_slices_stay_inside_their_row(day, device):
    """Each row's slices stop at the end of that row: the next row's larger values are not its own."""
    x = torch.zeros(3, 45, device=device)
    x[0, 40] = 1.0
    x[1] += 5.0
    x[1, 44] = 6.0
    x[2, 1] = 7.0
    check_tokens(day.sample(x, 0.0, block_size=32, chunk=16), torch.tensor([40, 44, 1]), "greedy rows of 3 slices")


def test_greedy_is_capture_safe(day, device):
    """sample runs inside the captured decode step: nothing may read a tensor back to the host."""
    from shared.course.testing import no_host_reads
    x = randn(2, 100, device=device, seed=12)
    with no_host_reads():
        got = day.sample(x, 0.0, block_size=32, chunk=9)
        one = day.sample(x[0], 0.0, block_size=32, chunk=9)
    check_tokens(got, torch.argmax(x, dim=-1), "greedy under the no-host-read guard")
    check_tokens(one, torch.argmax(x[0]), "greedy [V] under the no-host-read guard")


def test_1d_logits_give_a_0d_token(day, device):
    x = randn(50, device=device, seed=1)
    got = day.sample(x, block_size=32)
    assert got.dim() == 0, f"logits [V] must give a 0-d tensor (like torch.argmax), got shape {tuple(got.shape)}"
    assert got.device == x.device, f"the token must stay on {x.device}, got {got.device}"
    assert got.item() == int(torch.argmax(x)), f"greedy sample: got {got.item()}, expected {int(torch.argmax(x))}"
    drawn = day.sample(x, 1.0, generator=torch.Generator(device=x.device).manual_seed(0), block_size=32)
    assert drawn.dim() == 0 and drawn.dtype == torch.int64, "a drawn token from [V] logits must be a 0-d int64"


# ---- drawing: the distribution, the masks, the generator --------------------------------------
def chi_square(tokens, probs, what):
    """Histogram of the draws vs the expected probabilities; fail above the p=0.001 critical value."""
    counts = torch.bincount(tokens.cpu(), minlength=probs.numel()).double()
    n = tokens.numel()
    keep = probs > 0
    outside = int(counts[~keep].sum())
    assert outside == 0, f"{what}: {outside} of {n} draws hit tokens that have probability 0 (masked)"
    expected = n * probs[keep].double()
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    df = int(keep.sum()) - 1
    assert stat < CHI2_CRIT_P001[df], (
        f"{what}: the draws do not follow the expected distribution (chi-square {stat:.1f} > {CHI2_CRIT_P001[df]} "
        f"for {df} degrees of freedom, p=0.001); counts {counts.long().tolist()}, expected "
        f"{[round(float(e), 1) for e in n * probs.double()]}")


def reference_probs(logits, temperature, top_k, top_p):
    """softmax(logits / T) after the reference's top-k and top-p masks (the oracle's own steps)."""
    x = logits.double() / temperature
    if top_k and top_k < x.numel():
        x = x.masked_fill(x < torch.topk(x, top_k).values[-1], float("-inf"))
    p = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sp, order = torch.sort(p, descending=True)
        keep_sorted = (sp.cumsum(0) - sp) < top_p
        keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum()
    return p


@pytest.mark.parametrize("temperature, top_k, top_p, chunk", [(0.7, 0, 1.0, None), (1.5, 6, 0.85, None),
                                                              (0.7, 0, 1.0, 4)],
                         ids=["temperature", "top_k+top_p", "temperature-2-slices"])
def test_draws_follow_softmax_over_temperature(day, sizes, device, temperature, top_k, top_p, chunk):
    """Thousands of draws in ONE call ([N, 8], every row the same logits) vs the expected histogram;
    also with each row cut into 2 slices (the slices' winners merged by a second launch)."""
    n = sizes(tiny=2000, real=200_000)
    logits = torch.tensor([1.0, -0.5, 2.0, 0.3, -1.2, 0.9, 1.6, -0.1])
    probs = reference_probs(logits, temperature, top_k, top_p)
    gen = torch.Generator(device=device).manual_seed(1234)
    kw = dict(block_size=64) if sizes.sim else {}
    if chunk:
        kw["chunk"] = chunk
    tokens = day.sample(logits.to(device).repeat(n, 1), temperature, top_k, top_p, gen, **kw)
    assert tokens.shape == (n,), f"sample of [{n}, 8] logits must give [{n}] tokens, got {tuple(tokens.shape)}"
    chi_square(tokens, probs, f"sample(T={temperature}, top_k={top_k}, top_p={top_p})")


def test_top_k_never_leaves_the_top_k(day, sizes, device):
    rows, vocab, k = sizes(tiny=(48, 40, 4), real=(256, 49152, 50))
    x = randn(rows, vocab, device=device, seed=3)
    x[::5, : vocab // 2] = float("-inf")
    gen = torch.Generator(device=device).manual_seed(0)
    tok = day.sample(x, 5.0, k, 1.0, gen, **(dict(block_size=64) if sizes.sim else {}))
    kth = torch.topk(x, k, dim=-1).values[:, -1]
    picked = x.gather(-1, tok[:, None].to(x.device)).squeeze(-1)
    bad = (picked < kth).nonzero()
    assert not len(bad), (f"top_k={k}: row {int(bad[0])} drew token {int(tok[bad[0]])} with logit "
                          f"{float(picked[bad[0]]):.4g}, below the k-th largest {float(kth[bad[0]]):.4g}")
    assert len(set(tok.tolist())) > 1, "with temperature 5 the draws should not all be the same token"


def test_top_p_never_leaves_the_nucleus(day, sizes, device):
    rows, vocab, top_p = sizes(tiny=(48, 40, 0.6), real=(256, 49152, 0.9))
    x = randn(rows, vocab, device=device, seed=4, scale=2.0)
    gen = torch.Generator(device=device).manual_seed(0)
    tok = day.sample(x, 1.0, 0, top_p, gen, **(dict(block_size=64) if sizes.sim else {})).to(x.device)
    p = torch.softmax(x.double(), dim=-1)
    sp, order = torch.sort(p, dim=-1, descending=True)
    rank = torch.argsort(order, dim=-1).gather(-1, tok[:, None]).squeeze(-1)        # 0 = most likely
    before = (sp.cumsum(-1) - sp).gather(-1, rank[:, None]).squeeze(-1)             # mass ranked above
    bad = (before >= top_p).nonzero()
    assert not len(bad), (f"top_p={top_p}: row {int(bad[0])} drew a token of rank {int(rank[bad[0]])} whose "
                          f"higher-ranked tokens already hold {float(before[bad[0]]):.3f} of the mass (outside the nucleus)")


@pytest.mark.parametrize("chunk", [None, 7])
def test_top_k_1_and_tiny_temperature_are_greedy(day, sizes, device, chunk):
    x = distinct_logits(*sizes(tiny=(6, 50), real=(64, 49152)), seed=5, device=device)
    want = torch.argmax(x, dim=-1)
    kw = dict(block_size=64) if sizes.sim else {}
    if chunk:
        kw["chunk"] = chunk if sizes.sim else 4099
    gen = torch.Generator(device=device).manual_seed(0)
    check_tokens(day.sample(x, 1e-4, 0, 1.0, gen, **kw), want, "sample(temperature=1e-4) must be the argmax")
    check_tokens(day.sample(x, 2.0, 1, 1.0, gen, **kw), want, "sample(top_k=1) must be the argmax")
    check_tokens(day.sample(x, 2.0, 0, 1e-6, gen, **kw), want, "sample(top_p=1e-6) keeps only the top token")


def test_seeded_generator_is_reproducible(day, device):
    x = randn(32, 20, device=device, seed=6)

    def draw(seed):
        return day.sample(x, 3.0, 0, 1.0, torch.Generator(device=device).manual_seed(seed), block_size=64)
    a, b, c = draw(11), draw(11), draw(12)
    assert torch.equal(a, b), "the same seed must give the same tokens (draw the noise from `generator`)"
    assert not torch.equal(a, c), "different seeds gave identical tokens for 32 rows at temperature 3"


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(chunk=0),
                                 dict(chunk=-4)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bad_arguments_raise_value_error(day, device, bad, temperature):
    with pytest.raises(ValueError):
        day.sample(torch.zeros(10, device=device), temperature, **bad)


def test_bad_shape_raises_value_error(day, device):
    with pytest.raises(ValueError):
        day.sample(torch.zeros(2, 3, 10, device=device))


# ---- GPU: real vocab, the same contract, and speed vs torch ----------------------------------
@pytest.mark.gpu
def test_matches_reference_greedy_on_smollm2_sized_batch(day, device):
    x = randn(64, 49152, dtype=torch.float16, device=device, seed=8, scale=4.0)
    check_tokens(day.sample(x), reference.sample(x), "greedy sample [64, 49152] fp16")


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_greedy_and_sampling_vs_torch(day, device):
    """One decode row of SmolLM2 logits. Top-p sampling is a same-run target: no slower than 1.5x
    the reference, which does the same top-k/top-p bookkeeping plus torch.multinomial (0.6x to 0.77x
    on an H100). Greedy is a report only: one row is microseconds of work, so both it and torch.argmax
    time mostly the launch. The tokens of the timed calls are checked too."""
    x = randn(1, 49152, dtype=torch.float16, device=device, seed=9, scale=4.0)
    gen = torch.Generator(device=device).manual_seed(0)
    check_tokens(day.sample(x), torch.argmax(x.float(), dim=-1), "greedy sample (the timed call)")
    drawn = day.sample(x, 0.8, 50, 0.9, gen)
    top50 = torch.topk(x.float(), 50, dim=-1).indices
    assert bool((top50 == drawn.reshape(-1, 1)).any()), f"sample(top_k=50) drew {drawn.tolist()}, outside the top 50"

    def ms(fn, reps=200):
        return cuda_time_ms(fn, reps)

    result = dict(vocab=49152, greedy_ms=ms(lambda: day.sample(x)), torch_argmax_ms=ms(lambda: torch.argmax(x, -1)),
                  sample_top_p_ms=ms(lambda: day.sample(x, 0.8, 50, 0.9, gen)),
                  reference_top_p_ms=ms(lambda: reference.sample(x, 0.8, 50, 0.9, gen)))
    result["top_p_ratio"] = result["sample_top_p_ms"] / result["reference_top_p_ms"]
    record_bench("day_17_sampling", result)
    assert result["top_p_ratio"] < 1.5, (
        f"top-p sampling takes {result['sample_top_p_ms']:.3f} ms, {result['top_p_ratio']:.2f}x the reference's "
        f"{result['reference_top_p_ms']:.3f} ms: is the kernel doing more than one pass over the vocabulary?")


def single_and_many_blocks_us(day, x):
    """Microseconds per greedy call, graph-replayed: the vocab in one block vs the default slices."""
    from shared.course.testing import graph_us
    return graph_us(lambda: day.sample(x, 0.0, chunk=x.shape[-1])), graph_us(lambda: day.sample(x, 0.0))


@pytest.mark.gpu
@pytest.mark.parametrize("launch", [dict(), dict(chunk=1000), dict(chunk=4099, block_size=1024), dict(block_size=128),
                                    dict(chunk=128257)],
                         ids=["auto", "chunk1000", "chunk4099-b1024", "b128", "one-block"])
def test_llama_vocab_greedy_many_blocks(day, device, launch):
    """Llama-3's vocab (128 256), fp32 and fp16, [1, V] and [8, V]: random rows plus ties across slices."""
    for rows, dtype in [(1, torch.float32), (8, torch.float16)]:
        x = randn(rows, 128256, dtype=dtype, device=device, seed=rows, scale=4.0)
        x[0, [77_000, 3_000, 128_255]] = 50.0
        check_tokens(day.sample(x, 0.0, **launch), torch.argmax(x.float(), dim=-1),
                     f"greedy [{rows}, 128256] {dtype} {launch}")


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_greedy_many_blocks_vs_one(day, device):
    """One decode row of Llama-3's 128 256 fp32 logits: greedy over many blocks (the default) vs the
    same kernel with the whole vocab in ONE block (chunk = V), graph-replayed, same run. One block
    keeps one SM of the GPU's 100+ busy; the slices should make it at least 3x faster."""
    x = randn(1, 128256, device=device, seed=13, scale=4.0)
    check_tokens(day.sample(x, 0.0), torch.argmax(x, dim=-1), "greedy 128256 (the timed call)")
    check_tokens(day.sample(x, 0.0, chunk=x.shape[-1]), torch.argmax(x, dim=-1), "greedy 128256, one block")
    one_us, many_us = single_and_many_blocks_us(day, x)
    result = dict(vocab=128256, one_block_us=round(one_us, 2), many_blocks_us=round(many_us, 2),
                  speedup=round(one_us / many_us, 2))
    record_bench("day_17_greedy_many_blocks", result)
    assert one_us >= 3 * many_us, (f"greedy over many blocks takes {many_us:.1f} us, one block {one_us:.1f} us "
                                   f"(only {one_us / many_us:.1f}x): are the slices spread over the grid?")
