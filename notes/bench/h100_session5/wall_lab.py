"""Where does a decode step's wall time go?  python3 lab/wall_lab.py MODEL OUT_JSON"""
import json, sys, time, statistics as st
import torch
from shared.runtime import gpu  # noqa
from shared.engine import Engine
from shared.reference.benchmark import synthetic_prompt
from shared.engine import decode_loop

model, out = sys.argv[1], sys.argv[2]
eng = Engine(model, track="solutions")
res = {"model": model, "gpu": torch.cuda.get_device_name(), "describe": eng.caps.describe(),
       "paged": getattr(eng, "use_paged", None), "graphs": eng.use_graphs}
vocab = eng.config.vocab_size
prompt = synthetic_prompt(vocab, 512)
for _ in range(2):
    list(eng.generate_ids(prompt, max_new_tokens=64, ignore_eos=True))
t = eng.stats.token_times
d = [1e3 * (b - a) for a, b in zip(t[1:], t[2:])]
res["wall_ms_median"], res["wall_ms_mean"] = st.median(d), st.mean(d)
res["decode_tok_s"] = eng.stats.decode_tok_s
# host time of each piece of the loop
from shared.engine.runner import ModelRunner
timers = {}
def wrap(obj, name):
    f = getattr(obj, name)
    def g(*a, **k):
        t0 = time.perf_counter(); r = f(*a, **k); timers.setdefault(name, []).append(1e6 * (time.perf_counter() - t0)); return r
    setattr(obj, name, g)
r = eng.runner(576)
wrap(r, "decode_on_device"); wrap(r.backend, "prepare")
if r.greedy_graphs is not None: wrap(r.greedy_graphs, "run")
wrap(decode_loop.TokenReader, "push"); wrap(decode_loop.TokenReader, "pop")
list(eng.generate_ids(prompt, max_new_tokens=64, ignore_eos=True))
res["host_us_median"] = {k: st.median(v[3:]) for k, v in timers.items()}
t = eng.stats.token_times
d = [1e3 * (b - a) for a, b in zip(t[1:], t[2:])]
res["wall_ms_median_instrumented"] = st.median(d)
# raw graph replays from python, timed on host and device
rr = eng.runner(576)
res["graph_keys"] = [str(k) for k in rr.greedy_graphs.graphs]
g = rr.greedy_graphs.graphs[max(rr.greedy_graphs.graphs)][0]
torch.cuda.synchronize()
e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
g.replay(); e0.record()
for _ in range(50): g.replay()
e1.record(); torch.cuda.synchronize()
res["gpu_ms_per_token"] = e0.elapsed_time(e1) / 50
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(50): g.replay()
host = time.perf_counter() - t0
torch.cuda.synchronize()
res["replay_host_us"] = 1e6 * host / 50
res["replay_wall_ms"] = 1e3 * (time.perf_counter() - t0) / 50
import cProfile, pstats, io
pr = cProfile.Profile(); pr.enable()
list(eng.generate_ids(prompt, max_new_tokens=64, ignore_eos=True))
pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
res["profile"] = s.getvalue()[-4000:]
res["max_alloc_gb"] = torch.cuda.max_memory_allocated() / 1e9
print(json.dumps({k: v for k, v in res.items() if k != "profile"}, indent=1)); print(res["profile"])
json.dump(res, open(out, "w"), indent=1)
