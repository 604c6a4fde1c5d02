"""Day 15 checker: mlp = down(silu(gate(x)) * up(x)) through ops. Run: pytest checkers/day_15"""
import pytest
import torch

from shared.course.testing import assert_close, randn

# fp32: the same math as HF up to summation order. fp16: gate, up and their product are rounded
# to fp16 between the kernels (HF here runs in fp32), about 1e-3 relative each.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=1e-2, rtol=1e-2)}


def hf_mlp(hidden, inter, seed=0):
    """Hugging Face's LlamaMLP with seeded random weights (fp32, CPU): the oracle."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=hidden, intermediate_size=inter, hidden_act="silu")).eval()


def weights(m, dtype, device):
    return [p.detach().to(device=device, dtype=dtype) for p in (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight)]


class RecordingOps:
    """Wraps ops and notes the name of every component called."""

    def __init__(self, ops):
        self._ops, self.calls = ops, []

    def __getattr__(self, name):
        fn = getattr(self._ops, name)

        def record(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)
        return record


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T", [5, pytest.param(1, marks=pytest.mark.gpu)], ids=["prefill", "decode"])
def test_matches_hf_llama_mlp(day, sizes, device, ops, dtype, T):
    """SiLU on the gate projection times the up projection, then down -- through ops:
    three ops.linear and one fused ops.silu_mul, so the engine can swap in your kernels."""
    hidden, inter = sizes(tiny=(64, 96), real=(576, 1536))
    T = sizes(tiny=T, real=T * 25)
    m = hf_mlp(hidden, inter)
    x = randn(T, hidden, seed=T)
    with torch.no_grad():
        expected = m(x)
    rec = RecordingOps(ops)
    out = day.mlp(x.to(device=device, dtype=dtype), *weights(m, dtype, device), rec)
    assert sorted(rec.calls) == ["linear", "linear", "linear", "silu_mul"], \
        f"mlp called {rec.calls}; expected ops.linear three times (gate, up, down) and ops.silu_mul once"
    assert out.dtype == dtype, f"mlp must return x's dtype ({dtype}), got {out.dtype}"
    assert_close(out, expected, f"mlp vs HF LlamaMLP hidden={hidden} inter={inter} T={T} {dtype}", **TOL[dtype])


@pytest.mark.parametrize("bad", ["down", "x-1d"])
def test_bad_shapes_raise_value_error(day, device, ops, bad):
    wg, wu, wd = torch.zeros(48, 32, device=device), torch.zeros(48, 32, device=device), torch.zeros(32, 48, device=device)
    x = torch.zeros(2, 32, device=device)
    if bad == "down":
        wd = torch.zeros(48, 32, device=device)
    else:
        x = torch.zeros(32, device=device)
    with pytest.raises(ValueError):
        day.mlp(x, wg, wu, wd, ops)
