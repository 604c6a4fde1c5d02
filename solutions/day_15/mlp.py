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
    if x.dim() != 2:
        raise ValueError(f"mlp takes x [T, hidden], got shape {tuple(x.shape)}: reshape it to 2-D first")
    hidden, inter = x.shape[1], w_gate.shape[0]
    if w_gate.shape != (inter, hidden) or w_up.shape != (inter, hidden) or w_down.shape != (hidden, inter):
        raise ValueError(f"mlp weights must be gate/up [inter, {hidden}] and down [{hidden}, inter]; got "
                         f"{tuple(w_gate.shape)}, {tuple(w_up.shape)}, {tuple(w_down.shape)}")
    gate = ops.linear(x, w_gate)                      # [T, inter]
    up = ops.linear(x, w_up)                          # [T, inter]
    return ops.linear(ops.silu_mul(gate, up), w_down)  # [T, hidden]
