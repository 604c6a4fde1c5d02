"""Day 05 checker: matmul y = x @ w.T, naive and tiled. Run: pytest checkers/day_05"""
import math

import pytest
import torch

from shared import reference as ref
from shared.course.testing import assert_close, randn, record_bench, tol

DTYPES = [torch.float32, torch.float16]
KERNELS = [pytest.param(False, id="naive"), pytest.param(True, id="tiled")]


def mm_tol(dtype, K: int) -> dict:
    """A different summation order than torch's: fp32 rounding grows with K (partial sums grow too);
    an fp16 output is dominated by its own rounding. A real bug is off by O(1), far above these."""
    return tol(dtype, scale=max(1.0, K / 16 if dtype == torch.float32 else math.sqrt(K) / 4))


@pytest.mark.parametrize("tiled", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_shapes(day, sizes, device, tiled, dtype):
    """M, N, K that are not multiples of the tile: guard the output, zero-pad the tiles."""
    for M, N, K in sizes(tiny=[(1, 1, 1), (17, 13, 33), (5, 20, 7)],
                         real=[(1, 1, 1), (17, 33, 1), (129, 1537, 577), (1000, 999, 1001)]):
        x = randn(M, K, dtype=dtype, device=device, seed=M + K)
        w = randn(N, K, dtype=dtype, device=device, seed=N + K + 1)
        assert_close(day.matmul(x, w, tiled=tiled, tile=8), ref.matmul(x, w),
                     f"matmul x[{M},{K}] @ w[{N},{K}].T {dtype} tiled={tiled} tile=8", **mm_tol(dtype, K))


@pytest.mark.parametrize("tiled", KERNELS)
def test_other_tile_sizes(day, sizes, device, tiled):
    for tile in sizes(tiny=[16], real=[16, 32]):
        M, N, K = sizes(tiny=(18, 20, 40), real=(300, 517, 1000))
        x, w = randn(M, K, device=device, seed=1), randn(N, K, device=device, seed=2)
        assert_close(day.matmul(x, w, tiled=tiled, tile=tile), ref.matmul(x, w),
                     f"matmul [{M},{K}] @ [{N},{K}].T tiled={tiled} tile={tile}", **mm_tol(torch.float32, K))


def test_tiled_barriers(day, sizes, device):
    """K spans several tiles: without a barrier after the loads a thread multiplies a half-loaded tile;
    without one after the multiply a fast thread overwrites the tile others are still reading."""
    M, N, K = sizes(tiny=(16, 16, 64), real=(1024, 1024, 4096))
    for seed in range(2):
        x, w = randn(M, K, device=device, seed=10 + seed), randn(N, K, device=device, seed=20 + seed)
        assert_close(day.matmul(x, w, tiled=True, tile=16), ref.matmul(x, w),
                     f"tiled matmul K={K} tile=16 (run {seed}) -- a cuda.syncthreads() missing?",
                     **mm_tol(torch.float32, K))


@pytest.mark.parametrize("tiled", KERNELS)
def test_accumulates_in_fp32(day, device, tiled):
    """1024 + 39 * 0.125 = 1028.875 -> 1029 in fp16. An fp16 running sum stays at 1024 (0.125 is
    less than half an fp16 step at 1024), so the sum must be kept in float32 and cast once at the end."""
    K = 40
    x = torch.full((2, K), 0.125, dtype=torch.float16, device=device)
    x[:, 0] = 1024.0
    w = torch.ones(3, K, dtype=torch.float16, device=device)
    out = day.matmul(x, w, tiled=tiled, tile=8)
    assert out.dtype == torch.float16, f"fp16 inputs must give an fp16 output, got {out.dtype}"
    assert_close(out, ref.matmul(x, w), f"fp16 matmul with a large first term, tiled={tiled}", atol=0, rtol=0)


@pytest.mark.parametrize("tiled", KERNELS)
def test_strided_operands(day, device, tiled):
    """A weight stored as [K, N] and passed as its transposed view, and a row slice of x."""
    x = randn(20, 9, device=device, seed=30)[::2]
    w = randn(9, 11, device=device, seed=31).t()
    assert_close(day.matmul(x, w, tiled=tiled, tile=8), ref.matmul(x, w), f"matmul on strided views tiled={tiled}")


def test_new_output_and_empty_input(day, device):
    x, w = randn(3, 5, device=device, seed=40), randn(4, 5, device=device, seed=41)
    x0, w0 = x.clone(), w.clone()
    out = day.matmul(x, w, tile=8)
    assert out.shape == (3, 4) and out.dtype == x.dtype and out.device == x.device, \
        f"matmul must return [M, N] in x's dtype and device, got {tuple(out.shape)} {out.dtype} {out.device}"
    assert torch.equal(x, x0) and torch.equal(w, w0), "matmul must not modify its inputs"
    assert day.matmul(torch.empty(0, 5, device=device), w, tile=8).shape == (0, 4)


def test_bad_inputs_raise_value_error(day, device):
    with pytest.raises(ValueError):
        day.matmul(torch.zeros(3, 5, device=device), torch.zeros(4, 6, device=device))      # K differs
    with pytest.raises(ValueError):
        day.matmul(torch.zeros(3, 5, device=device), torch.zeros(4, 5, device=device, dtype=torch.float16))
    with pytest.raises(ValueError):
        day.matmul(torch.zeros(5, device=device), torch.zeros(4, 5, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("tiled", KERNELS)
def test_smollm2_shapes_fp16(day, device, tiled):
    """SmolLM2-135M: the MLP up projection on a 512-token prefill, the LM head for one token."""
    for M, N, K in [(512, 1536, 576), (1, 49152, 576)]:
        x = randn(M, K, dtype=torch.float16, device=device, seed=M)
        w = randn(N, K, dtype=torch.float16, device=device, seed=N, scale=0.05)
        assert_close(day.matmul(x, w, tiled=tiled, tile=32), ref.matmul(x, w),
                     f"fp16 matmul [{M},{K}] @ [{N},{K}].T tiled={tiled}", **mm_tol(torch.float16, K))


def _median_ms(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.mark.gpu
@pytest.mark.bench
def test_tiled_beats_naive(day, device):
    """Same run, same inputs: tiling must pay off at 1024 x 1024 x 1024 fp32."""
    n = 1024
    x, w = randn(n, n, device=device, seed=1), randn(n, n, device=device, seed=2)
    naive = _median_ms(lambda: day.matmul(x, w, tiled=False, tile=16))
    tiled = {t: _median_ms(lambda: day.matmul(x, w, tiled=True, tile=t)) for t in (16, 32)}
    torch_ms = _median_ms(lambda: x @ w.T)
    best = min(tiled.values())
    result = {"shape": [n, n, n], "dtype": "float32", "naive_ms": naive, "tiled16_ms": tiled[16],
              "tiled32_ms": tiled[32], "torch_ms": torch_ms, "ratio_naive_over_tiled": naive / best,
              "gflops_tiled": 2 * n ** 3 / best / 1e6}
    record_bench("day05_matmul", result)
    assert naive / tiled[16] > 1, f"tiled (tile 16) {tiled[16]:.2f} ms is not faster than naive {naive:.2f} ms"
