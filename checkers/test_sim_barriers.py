"""The simulator refuses a barrier that not every thread of a block reaches (shared/runtime/simbarrier.py).

On a GPU `cuda.syncthreads()` inside `if tid < s:` is undefined behaviour; Numba's simulator
would let it pass. These kernels are the lesson's tree sum, right and wrong.
"""
import pytest
import torch

from shared.runtime import gpu
from numba import cuda, float32


@cuda.jit
def tree_sum(x, out):
    buf = cuda.shared.array(64, float32)
    tid = cuda.threadIdx.x
    buf[tid] = x[tid]
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        out[0] = buf[0]


@cuda.jit
def tree_sum_barrier_in_if(x, out):
    buf = cuda.shared.array(64, float32)
    tid = cuda.threadIdx.x
    buf[tid] = x[tid]
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
            cuda.syncthreads()            # the mistake: threads tid >= s never get here
        s //= 2
    if tid == 0:
        out[0] = buf[0]


@cuda.jit
def early_return_then_barrier(x, out):
    buf = cuda.shared.array(64, float32)
    tid = cuda.threadIdx.x
    if tid >= 8:
        return                             # the mistake: these threads skip the barrier below
    buf[tid] = x[tid]
    cuda.syncthreads()
    out[0] = buf[0]


@cuda.jit
def two_different_barriers(x, out):
    tid = cuda.threadIdx.x
    if tid % 2:
        cuda.syncthreads()
    else:
        cuda.syncthreads()                 # same count, another barrier: undefined on a GPU too
    out[0] = x[0]


def test_a_correct_tree_passes(device):
    x, out = torch.arange(32, dtype=torch.float32, device=device), torch.zeros(1, device=device)
    gpu.launch(tree_sum, 1, 32, x, out)
    assert out.item() == x.sum().item()


@pytest.mark.skipif(not gpu.SIM, reason="the check runs in the simulator (synccheck does not flag this on a GPU)")
@pytest.mark.parametrize("kernel", [tree_sum_barrier_in_if, early_return_then_barrier, two_different_barriers],
                         ids=["barrier_inside_if", "early_return", "two_barriers"])
def test_a_barrier_not_every_thread_reaches_fails_with_one_line(device, kernel):
    from shared.runtime.simbarrier import BarrierDivergence
    x, out = torch.ones(32, device=device), torch.zeros(1, device=device)
    with pytest.raises(BarrierDivergence) as info:
        gpu.launch(kernel, 1, 32, x, out)
    msg = str(info.value)
    assert msg.startswith("cuda.syncthreads() not reached by every thread of the block: a barrier inside an `if`?")
    assert "\n" not in msg


@pytest.mark.skipif(not gpu.SIM, reason="the check runs in the simulator")
def test_the_next_launch_works_after_a_divergent_one(device):
    x, out = torch.ones(32, device=device), torch.zeros(1, device=device)
    with pytest.raises(Exception):
        gpu.launch(tree_sum_barrier_in_if, 1, 32, x, out)
    gpu.launch(tree_sum, 2, 32, x, out)
    assert out.item() == 32


@cuda.jit(device=True)
def count_up(n):
    s = float32(0.0)
    for _ in range(n):
        s += float32(1.0)
    return s


@cuda.jit
def one_thread_raises(out, n):
    tid = cuda.threadIdx.x
    if tid == 0:
        out[tid] = out[out.shape[0]]     # out of bounds: the launch fails while the others still run
    out[tid] = count_up(n)


@cuda.jit
def block_sizes(out):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i < out.shape[0]:
        out[i] = count_up(3) + cuda.blockDim.x


@pytest.mark.skipif(not gpu.SIM, reason="simulator threads")
def test_a_failed_launch_leaves_no_thread_running_into_the_next(device):
    """Numba's simulator raises as soon as one thread fails and leaves the others running; while they
    run, their module's `cuda` is the failed launch's fake one, so the next launch from the module
    read the old blockDim (most such pairs were wrong before shared/runtime/simbarrier.py joined them)."""
    for _ in range(3):
        with pytest.raises(Exception):
            gpu.launch(one_thread_raises, 1, 32, torch.zeros(32, device=device), 3000)
        out = torch.zeros(64, device=device)
        gpu.launch(block_sizes, 4, 16, out)
        assert (out == 19).all(), (f"the launch after a failed one wrote {sorted(set(out.tolist()))}, expected 19 "
                                   "(3 + its blockDim of 16): it read the failed launch's blockDim")
