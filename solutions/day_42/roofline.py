"""Day 42 -- bytes per decode token: what the roofline divides by.

At batch 1 a decode step is bound by memory: its time is at least (bytes it moves) / (memory
bandwidth). `decode_bytes` counts those bytes by kind for day 54's fused step, so the bench can
say what share of the roofline a run reaches, and the lesson can say why int8 weights give less
than 2x: the KV cache, the activations, the norms (and the lm_head, if it stays in fp16) do not
shrink.

Lesson: notes/day_42_int8_fast.md ("Bytes per token")        Check: pytest checkers/day_42
"""
KEYS = ("weights", "scales", "norms", "embedding", "kv", "activations")


def decode_bytes(config, quant: str | None = None, *, context: int = 1, group_size: int | None = None,
                 head: bool = True, dtype_bytes: int = 2) -> dict:
    """Bytes one decode token (batch 1, the fused step) moves, by kind: {key: int} for KEYS.

    quant None: every matrix in the model dtype (dtype_bytes per value); "w8a16": int8 matrices
    (1 byte per value) with one fp32 scale per row (group_size None) or per group of group_size
    columns, symmetric; the lm_head int8 too unless head=False. With L layers, D hidden, H and KV
    heads of hd, F intermediate, V vocabulary:
      weights      per layer wqkv [(H + 2 KV) hd, D], wo [D, H hd], w_gate_up [2F, D], w_down [D, F];
                   then lm_head [V, D]
      scales       4 bytes per row (or per group) of every int8 matrix; 0 unquantized
      norms        2 D per layer + D (the final norm)
      embedding    one row: D values
      kv           2 (K and V) * L * KV * hd values per position, for the `context` positions the
                   attention reads (the new token included) and the one it writes: context + 1
      activations  each GEMV reads its input row and writes its output row, and linear_add also
                   reads h: per layer D + (H + 2 KV) hd | H hd + 2 D | D + F | F + 2 D values;
                   the head reads D values and writes the logits once in fp32 (4 V bytes)
    norms, embedding, kv and activations are dtype_bytes per value whatever `quant` is.
    A group_size that does not divide a matrix's `in`, or another quant: ValueError (one line).
    """
    if quant not in (None, "w8a16"):
        raise ValueError(f"decode_bytes: quant must be None or 'w8a16', got {quant!r}")
    c, b = config, dtype_bytes
    D, F, V, hd = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    H, KV, L = c.num_heads, c.num_kv_heads, c.num_layers
    layer = [((H + 2 * KV) * hd, D), (D, H * hd), (2 * F, D), (D, F)]          # [out, in]
    matrices = [(shape, True) for _ in range(L) for shape in layer] + [((V, D), head)]
    out = dict.fromkeys(KEYS, 0)
    for (n, k), int8 in matrices:
        if quant == "w8a16" and int8:
            if group_size is not None and k % group_size:
                raise ValueError(f"decode_bytes: group_size {group_size} does not divide in = {k}")
            out["weights"] += n * k
            out["scales"] += 4 * n * (1 if group_size is None else k // group_size)
        else:
            out["weights"] += b * n * k
    out["norms"] = b * (2 * L + 1) * D
    out["embedding"] = b * D
    out["kv"] = b * 2 * L * KV * hd * (context + 1)
    per_layer = (D + (H + 2 * KV) * hd) + (H * hd + 2 * D) + (D + F) + (F + 2 * D)
    out["activations"] = b * (L * per_layer + D) + 4 * V
    return out
