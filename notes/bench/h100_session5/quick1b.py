import statistics as st, torch, sys
from shared.runtime import gpu  # noqa
from shared.engine import Engine
from shared import bench
eng = Engine(sys.argv[1], track="solutions")
p = bench.synthetic_prompt(eng.config.vocab_size, 512)
for big in (False, True):
    if big:
        eng.runner(8256)          # the bench's pool: sized for its longest context
    for _ in range(2):
        list(eng.generate_ids(p, max_new_tokens=64, ignore_eos=True))
    t = eng.stats.token_times
    d = [1e3 * (b - a) for a, b in zip(t[1:], t[2:])]
    print(f"pool {eng.runner(576).backend.max_len}: wall median {st.median(d):.3f} ms, decode {eng.stats.decode_tok_s:.1f} tok/s, "
          f"GPU {bench.gpu_ms_per_token(eng, 512, max_len=8256 if big else 576):.3f} ms", flush=True)
