"""The peers `tinyinfer bench --peer` measures in the same run, on the same GPU and weights.

- torch.compile: a gpt-fast-style decode step in plain PyTorch -- static KV buffers, SDPA with
  GQA, RoPE from a position tensor, greedy argmax on the device -- compiled with
  `torch.compile(mode="reduce-overhead", fullgraph=True)` (Inductor's kernels replayed from a CUDA
  graph). It reads the engine's own weights, so bytes per token are the same. The loop keeps
  each token on the device and feeds it back (no host read per token): the peer at its best.
- llama.cpp: `llama-bench` (a binary on PATH, or given) on a GGUF of the same model, if there is
  one; its pp/tg numbers are copied into the report as they come.
A peer that cannot run gives one line in the report instead of numbers; the rest still appears.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time

import torch
import torch.nn.functional as F


LAYER = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


class CompiledStep(torch.nn.Module):
    """One decode step (T = 1) of a Llama model in plain PyTorch over static buffers. Every tensor
    is a registered buffer (the engine's weights themselves, not copies), as in gpt-fast, so the
    compiler treats their addresses as fixed and the KV writes as mutations of static inputs."""

    def __init__(self, weights, max_len: int):
        super().__init__()
        c = weights.config
        self.c, self.max_len = c, max_len
        shape = (c.num_layers, 1, c.num_kv_heads, max_len, c.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=weights.dtype, device=weights.device))
        self.register_buffer("v", torch.zeros_like(self.k))
        self.register_buffer("inv_freq", weights.inv_freq.float())
        self.register_buffer("slots", torch.arange(max_len, device=weights.device))
        for name in ("embed", "final_norm", "lm_head"):
            self.register_buffer(name, getattr(weights, name))
        for i, L in enumerate(weights.layers):
            for name in LAYER:
                self.register_buffer(f"l{i}_{name}", getattr(L, name))

    def _rope(self, x, pos):
        """Rotate-half RoPE (HF's) at positions pos [T]: x [1, heads, T, hd]."""
        f = pos.float()[:, None] * self.inv_freq[None]
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * cos + rot * sin

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Greedy next token after ids [T] at positions pos [T] (any T: the prompt runs through it
        uncompiled); writes k, v at pos."""
        c, T = self.c, ids.shape[0]
        eps = c.rms_norm_eps
        x = self.embed[ids]
        mask = (self.slots[None, :] <= pos[:, None])[None, None]          # [1, 1, T, max_len]
        for i in range(c.num_layers):
            attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down = (getattr(self, f"l{i}_{n}") for n in LAYER)
            h = F.rms_norm(x.float(), (c.hidden_size,), eps=eps).to(x.dtype) * attn_norm
            q = (h @ wq.T).view(T, c.num_heads, c.head_dim).transpose(0, 1)[None]
            k = (h @ wk.T).view(T, c.num_kv_heads, c.head_dim).transpose(0, 1)[None]
            v = (h @ wv.T).view(T, c.num_kv_heads, c.head_dim).transpose(0, 1)[None]
            q, k = self._rope(q, pos), self._rope(k, pos)
            self.k[i].index_copy_(2, pos, k)
            self.v[i].index_copy_(2, pos, v)
            a = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, enable_gqa=True)
            x = x + a[0].transpose(0, 1).reshape(T, -1) @ wo.T
            h = F.rms_norm(x.float(), (c.hidden_size,), eps=eps).to(x.dtype) * mlp_norm
            x = x + (F.silu(h @ w_gate.T) * (h @ w_up.T)) @ w_down.T
        h = F.rms_norm(x[-1:].float(), (c.hidden_size,), eps=eps).to(x.dtype) * self.final_norm
        return (h @ self.lm_head.T).float().argmax(-1)


def torch_compile_peer(weights, prompt_ids: list[int], new_tokens: int, warmup: int = 8) -> dict:
    """Decode tok/s of the compiled step after a prompt, greedy, exactly new_tokens tokens."""
    dev = weights.device
    step = CompiledStep(weights, len(prompt_ids) + new_tokens + warmup + 1)
    compiled = torch.compile(step.forward, mode="reduce-overhead", fullgraph=True)
    with torch.inference_mode():
        P = len(prompt_ids)
        tok = step.forward(torch.tensor(prompt_ids, device=dev), torch.arange(P, device=dev))
        pos = torch.tensor([P], device=dev)
        t0 = time.perf_counter()
        for _ in range(warmup):                       # compile, record the graph; same position each time
            compiled(tok, pos).clone()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        tokens = [tok]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        for i in range(new_tokens - 1):
            tok = compiled(tok, pos + i).clone()     # cudagraph outputs are overwritten by the next replay
            tokens.append(tok)
        end.record()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    steps = new_tokens - 1
    return {"decode_tok_s": steps / wall, "ms_per_token": 1e3 * wall / steps,
            "gpu_ms_per_token": start.elapsed_time(end) / steps, "compile_s": compile_s,
            "tokens": torch.cat(tokens).tolist()}


def llama_bench(binary: str | None, gguf: str | None) -> dict:
    """llama-bench's pp512 / tg128 (flash attention on, all layers on the GPU) as it reports them."""
    exe = binary or shutil.which("llama-bench")
    if exe is None:
        return {"error": "no llama-bench on PATH (give --llama-bench PATH)"}
    if gguf is None:
        return {"error": "no GGUF of this model to give llama-bench (give --gguf FILE)"}
    try:
        r = subprocess.run([exe, "-m", gguf, "-ngl", "99", "-fa", "1", "-p", "512", "-n", "128", "-r", "3", "-o", "json"],
                           capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"llama-bench did not run: {e}"}
    if r.returncode != 0:
        return {"error": f"llama-bench exited with {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1]}"}
    try:
        rows = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"error": "llama-bench printed no JSON"}
    out = {"gguf": gguf, "model_type": rows[0].get("model_type") if rows else None}
    for row in rows:
        kind = "pp" if row.get("n_prompt") else "tg"
        out[f"{kind}{row.get('n_prompt') or row.get('n_gen')}_tok_s"] = row.get("avg_ts")
    return out
