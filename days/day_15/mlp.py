"""Day 15 -- the MLP: down( silu(gate(x)) * up(x) ), composed from earlier days' kernels.

Lesson: notes/day_15_mlp.md        Check: pytest checkers/day_15
"""
import torch


def mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, ops) -> torch.Tensor:
    """SwiGLU feed-forward: x [T, hidden] -> [T, hidden] in x's dtype.

    w_gate, w_up [inter, hidden] and w_down [hidden, inter] in PyTorch's Linear layout. The
    matmuls are ops.linear and the gating is one fused ops.silu_mul, so whichever days are
    finished (yours or the reference) do the work.
    """
    raise NotImplementedError("Day 15: mlp is not written yet -- edit days/day_15/mlp.py "
                              "(lesson: notes/day_15_mlp.md)")
