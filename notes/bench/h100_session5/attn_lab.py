"""Paged decode attention per layer at decode shapes: knobs, lengths, split counts (graph replay)."""
import json, sys, torch
from shared.runtime import gpu  # noqa
from shared.course.testing import graph_us
from shared.course.registry import day_module
day = day_module(30, "solutions")
dev = "cuda"
res = {"gpu": torch.cuda.get_device_name()}
kvb, width = 16, 1024
for name, (H, KV, hd) in {"smollm2": (9, 3, 64), "llama1b": (32, 8, 64)}.items():
    kp = torch.randn(width, KV, kvb, hd, dtype=torch.float16, device=dev)
    vp = torch.randn_like(kp)
    q = torch.randn(1, H, hd, dtype=torch.float16, device=dev)
    table = torch.randperm(width, device=dev).to(torch.int32)[None]
    for n in (70, 513, 2048, 8192):
        lens = torch.full((1,), n, dtype=torch.int32, device=dev)
        for bsz, mb, sp in [(128, 256, 0), (64, 256, 0), (256, 256, 0), (128, 64, 0), (128, 1024, 0),
                            (128, 256, 4), (128, 256, 8), (128, 256, 16), (128, 1024, 16), (128, 256, 32),
                            (64, 256, 16), (256, 1024, 16)]:
            t = graph_us(lambda: day.paged_decode_attention(q, kp, vp, table, lens, block_size=bsz, merge_block=mb,
                                                            splits=sp))
            res[f"{name}_n{n}_bs{bsz}_mb{mb}_sp{sp}"] = round(t, 2)
        print(name, n, {k.split(f'n{n}_')[1]: v for k, v in res.items() if k.startswith(f"{name}_n{n}_")}, flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
