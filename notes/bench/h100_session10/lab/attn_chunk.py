"""Lab: day 30's paged decode attention (split + merge) at the 1B shape with a minimum chunk per split.
chunk_of(n, splits, bs) gives each split at least MINB KV blocks: short contexts run fewer, fuller splits
(the grid is unchanged; splits past the live length return at once). Graph-replayed, 16 'layers'."""
import sys, types, pathlib, torch
src = pathlib.Path("solutions/day_30/paged_decode.py").read_text()
old = "    return max((blocks + splits - 1) // splits, 1) * bs"
assert old in src
from shared.course.testing import graph_ms

def variant(minb):
    mod = types.ModuleType(f"pd_min{minb}")
    mod.__file__ = f"pd_min{minb}.py"
    exec(compile(src.replace(old, f"    return max((blocks + splits - 1) // splits, {minb}) * bs"), mod.__file__, "exec"), mod.__dict__)
    return mod

dev = "cuda" if torch.cuda.is_available() else "cpu"
B, H, KV, hd, bs = 1, 32, 8, 64, 16
ctx_cap = 4096 + 64 if dev == "cuda" else 128
max_blocks = ctx_cap // bs
layers = 16 if dev == "cuda" else 1
g = torch.Generator().manual_seed(0)
pools = [(torch.randn(max_blocks + 1, KV, bs, hd, generator=g).half().to(dev),
          torch.randn(max_blocks + 1, KV, bs, hd, generator=g).half().to(dev)) for _ in range(layers)]
q = torch.randn(B, H, hd, generator=g).half().to(dev)
tables = torch.randperm(max_blocks, generator=g)[:max_blocks].int().reshape(1, -1).to(dev)
mods = {mb: variant(mb) for mb in (1, 2, 4, 8, 16)}
for n in ((70, 512, 2048, 4096) if dev == "cuda" else (5, 70, 128)):
    lens = torch.tensor([n], dtype=torch.int32, device=dev)
    ref = mods[1].paged_decode_attention(q, *pools[0], tables, lens)
    row = []
    for mb, mod in mods.items():
        got = mod.paged_decode_attention(q, *pools[0], tables, lens)
        err = (got.float() - ref.float()).abs().max().item()
        assert err < 2e-3, (n, mb, err)
        if dev == "cuda":
            t = graph_ms([lambda p=p: mod.paged_decode_attention(q, *p, tables, lens) for p in pools], reps=20) * 1e3
            row.append(f"min{mb * bs:>4}: {t:6.2f} us")
        else:
            row.append(f"min{mb * bs}: ok")
    print(f"context {n:5d} | " + " | ".join(row), flush=True)
