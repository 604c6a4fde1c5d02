"""Day 11 checker: linear -- GEMV for decode, tiled GEMM for prefill. Run: pytest checkers/day_11"""
import pytest
import torch

from shared.reference import linear as reference_linear
from shared.course.testing import cuda_time_ms, assert_close, randn, record_bench, tol

DTYPES = [torch.float32, torch.float16]
SMOLLM2_SHAPES = [(576, 1536), (1536, 576), (576, 49152)]   # (in, out): up/gate, down, lm_head


def inputs(T, K, N, dtype, device, seed=0):
    """x [T, K], w [N, K] scaled by 1/sqrt(K) so outputs are O(1) at every K."""
    x = randn(T, K, seed=seed, dtype=dtype, device=device)
    w = randn(N, K, seed=seed + 1, scale=K ** -0.5, dtype=dtype, device=device)
    return x, w


def check(day, x, w, what, **kwargs):
    out = day.linear(x, w, **kwargs)
    assert out.dtype == x.dtype, f"{what}: linear must return x's dtype {x.dtype}, got {out.dtype}"
    assert_close(out, reference_linear(x, w), what, **tol(x.dtype, scale=2))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [32, 64])
def test_gemv_decode_step(day, sizes, device, dtype, block_size):
    """One token: K=100 is not a multiple of the block, so threads cover different counts of k."""
    K, N = sizes(tiny=(100, 5), real=(1000, 999))
    x, w = inputs(1, K, N, dtype, device, seed=block_size)
    check(day, x, w, f"linear path='gemv' K={K} N={N} {dtype} block_size={block_size}",
          path="gemv", block_size=block_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 23, 7), (17, 40, 18)])
def test_gemm_prefill_odd_shapes(day, device, dtype, shape):
    """T, K, N not multiples of the tile: edge tiles must be zero-padded and guarded.
    (17, 40, 18) spans 2 x 2 output tiles and 3 steps over K, so a missing barrier between
    loading a tile and using it (or before overwriting it) shows."""
    T, K, N = shape
    x, w = inputs(T, K, N, dtype, device, seed=T)
    check(day, x, w, f"linear path='gemm' T={T} K={K} N={N} {dtype}", path="gemm")


def test_auto_path_and_both_paths_agree_on_one_token(day, device):
    """path='auto' (what the engine calls) gives the same numbers as forcing either kernel."""
    x, w = inputs(1, 37, 6, torch.float32, device, seed=5)
    auto = check(day, x, w, "linear path='auto' T=1")
    gemm = check(day, x, w, "linear path='gemm' T=1", path="gemm")
    assert_close(auto, gemm, "linear T=1: auto vs gemm path", atol=1e-5, rtol=1e-5)
    x3, w3 = inputs(3, 37, 6, torch.float32, device, seed=6)
    check(day, x3, w3, "linear path='auto' T=3")


def test_inputs_untouched(day, device):
    x, w = inputs(2, 9, 4, torch.float32, device, seed=7)
    x0, w0 = x.clone(), w.clone()
    day.linear(x, w)
    assert torch.equal(x, x0) and torch.equal(w, w0), "linear must not modify x or w"


@pytest.mark.parametrize("case", ["in differs", "x 1-D", "dtypes differ", "unknown path", "gemv with T=2"])
def test_bad_inputs_raise_value_error(day, device, case):
    x, w, kw = torch.ones(2, 8, device=device), torch.ones(3, 8, device=device), {}
    if case == "in differs":
        w = torch.ones(3, 7, device=device)
    elif case == "x 1-D":
        x = x[0]
    elif case == "dtypes differ":
        w = w.half()
    elif case == "unknown path":
        kw = dict(path="cublas")
    else:
        kw = dict(path="gemv")
    with pytest.raises(ValueError):
        day.linear(x, w, **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("K,N", SMOLLM2_SHAPES)
@pytest.mark.parametrize("T", [1, 7, 128])
def test_smollm2_shapes_fp16(day, device, K, N, T):
    """The model's real projections: decode (T=1, GEMV) and prefill (GEMM)."""
    x, w = inputs(T, K, N, torch.float16, device, seed=K + N)
    check(day, x, w, f"linear T={T} {K}->{N} fp16")


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [64, 128, 256, 1024])
def test_gemv_block_sizes_real_shape(day, device, block_size):
    x, w = inputs(1, 1536, 576, torch.float16, device, seed=block_size)
    check(day, x, w, f"linear gemv 1536->576 block_size={block_size}", path="gemv", block_size=block_size)


def _time_ms(fn, reps=50):
    return cuda_time_ms(fn, reps)


@pytest.mark.gpu
@pytest.mark.bench
def test_bench_decode_gemv_vs_gemm(day, device):
    """One decode token through SmolLM2's projections: the GEMV kernel vs the tiled GEMM
    (same run, same card). Recorded, not asserted: the lesson asks you to explain the ratio."""
    result = {}
    for K, N in SMOLLM2_SHAPES:
        x, w = inputs(1, K, N, torch.float16, device, seed=1)
        for path in ("gemv", "gemm"):
            check(day, x, w, f"linear bench {path} {K}->{N}", path=path)
        gemv = _time_ms(lambda: day.linear(x, w, path="gemv"))
        gemm = _time_ms(lambda: day.linear(x, w, path="gemm"))
        torch_ms = _time_ms(lambda: x @ w.T)
        gbps = w.numel() * w.element_size() / (gemv * 1e-3) / 1e9
        result[f"{K}->{N}"] = dict(gemv_ms=round(gemv, 4), gemm_ms=round(gemm, 4), torch_ms=round(torch_ms, 4),
                                   gemm_over_gemv=round(gemm / gemv, 2), gemv_weight_GBps=round(gbps, 1))
    record_bench("day11_decode_gemv_vs_gemm", result)
