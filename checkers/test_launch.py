"""shared.runtime.gpu.launch: the fast path (GPU) gives the same results as numba's own launch."""
import pytest
import torch

from shared.runtime import gpu
from shared.course.testing import randn


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fast_launch_equals_numba_launch(dtype, monkeypatch):
    from solutions.day_01.vector_add import vector_add_kernel
    n = 100_003
    a, b = randn(n, dtype=dtype, device="cuda", seed=1), randn(n, dtype=dtype, device="cuda", seed=2)
    outs = []
    for fast in (False, True, True):  # the second fast call takes the cached path
        monkeypatch.setattr(gpu, "FAST", fast)
        out = torch.full_like(a, float("nan"))
        gpu.launch(vector_add_kernel, gpu.cdiv(n, 128), 128, a, b, out, n)
        outs.append(out)
    torch.cuda.synchronize()
    for out in outs:
        assert torch.equal(out, a + b)


def test_launch_counts_kernels(device):
    from solutions.day_01.vector_add import vector_add_kernel
    a = torch.ones(40, device=device)
    out = torch.empty_like(a)
    before = gpu.LAUNCHES
    gpu.launch(vector_add_kernel, 2, 32, a, a, out, 40)
    assert gpu.LAUNCHES == before + 1 and torch.equal(out, a + a)
