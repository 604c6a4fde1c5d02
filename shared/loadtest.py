"""`tinyinfer loadtest`: throughput and latency of an OpenAI-compatible server against concurrency.

Closed loop (day 53): at each concurrency C, C clients each send a streaming request and the next
one as soon as theirs ends, until the level's requests are done. Per level: ok / failed / lost /
duplicated requests, output tokens/s and requests/s, TTFT and inter-token latency p50/p90/p99,
and the server's KV pool once the level has drained (day 52's read-only GET /v1/stats: every block
must be back). Prompts are seeded words (the same flags give the same prompts); each carries its
request's id, in the text and in the OpenAI `user` field. The measuring is the track's day 53
(`percentile`, `latency_stats`, `timed_request`, `drive`); this module is the HTTP side (the async
`openai` client, no retries), the prompts, and loadtest.json, loadtest.md and two plots.
Ctrl-C stops the run and writes what was measured so far.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.reference.loadtest import PCTS, Chunk, Request, Usage

DEFAULT_LEVELS = "1,8,32,128"
DEFAULT_PROMPT_LENGTHS = "32,128"

# Prompt words: common English words, about one SmolLM2 token each (a byte-level model: ~5).
WORDS = tuple("""the of and to in is was that for it with as his on be at by had are but from or have an they
which one you were all we her she there would their will when who him been has more if no out so said what up
its about than into them can only other time new some could these two may first then do any like my now over
such our man me even most made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great old year off come
since against go came right used take three small large next early young important few public bad same able
river city water light house night story music garden window table market morning letter paper school road
green blue quiet bright simple careful open slow warm cold short tall clear""".split())


@dataclass(frozen=True)
class Config:
    url: str                          # the server's base URL, ending in /v1
    levels: tuple[int, ...]
    requests: int | None              # per level; None: max(16, 4 * C)
    max_tokens: int = 64
    prompt_lengths: tuple[int, ...] = (32, 128)
    shared_prefix: int = 0            # words of one prefix every request starts with (a system prompt)
    seed: int = 0
    api_key: str | None = None
    model: str | None = None
    chat: bool = False
    temperature: float = 0.0
    ignore_eos: bool = True
    timeout: float = 300.0            # seconds for one request
    warmup: int | None = None         # untimed requests at the highest level first; None: that level's C
    settle: float = 30.0              # seconds to wait for the server's pool after a level

    def per_level(self, c: int) -> int:
        return self.requests if self.requests is not None else max(16, 4 * c)


# ---- flags ------------------------------------------------------------------------------------------
def parse_levels(text: str) -> list[int]:
    """'1,8,32,128' -> [1, 8, 32, 128]: one line for anything else (a level must be >= 1)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError("--concurrency needs at least one level, e.g. --concurrency 1,8,32,128")
    out = []
    for p in parts:
        try:
            c = int(p)
        except ValueError:
            raise ValueError(f"--concurrency {text!r}: {p!r} is not an integer (give e.g. 1,8,32,128)") from None
        if c < 1:
            raise ValueError(f"--concurrency {text!r}: each level must be at least 1 request in flight, got {c}")
        out.append(c)
    return out


def parse_lengths(text: str) -> list[int]:
    try:
        out = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--prompt-lengths {text!r}: give comma-separated word counts, e.g. 32,128") from None
    if not out or min(out) < 1:
        raise ValueError(f"--prompt-lengths {text!r}: each length must be at least 1 word")
    return out


def base_url(url: str) -> str:
    """http://host:port[/v1] -> http://host:port/v1 (one line for anything that is not http(s))."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url {url!r}: give the server's address, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path if path.endswith('/v1') else path + '/v1'}"


def check(cfg: Config) -> None:
    for name, v, low in (("--requests", cfg.requests, 1), ("--max-tokens", cfg.max_tokens, 1),
                         ("--shared-prefix", cfg.shared_prefix, 0), ("--warmup", cfg.warmup, 0)):
        if v is not None and v < low:
            raise ValueError(f"{name} must be at least {low}, got {v}")
    if not 0 <= cfg.temperature <= 2:
        raise ValueError(f"--temperature must be in [0, 2], got {cfg.temperature}")
    for name, v in (("--timeout", cfg.timeout), ("--settle", cfg.settle)):
        if not (v >= 0 if name == "--settle" else v > 0) or math.isinf(v):
            raise ValueError(f"{name} must be a number of seconds {'>= 0' if name == '--settle' else '> 0'}, got {v}")


# ---- prompts ----------------------------------------------------------------------------------------
def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_requests(cfg: Config, n: int, first_id: int, stream: str) -> list[Request]:
    """n requests with ids first_id.. ; the same (seed, stream, n) gives the same prompts. Each
    prompt: 'request ID:' and a length from cfg.prompt_lengths in words, after the shared prefix."""
    rng = random.Random(f"{cfg.seed}/{stream}")
    system = words(random.Random(f"{cfg.seed}/prefix"), cfg.shared_prefix) if cfg.shared_prefix else None
    return [Request(i, f"request {i}: " + words(rng, rng.choice(cfg.prompt_lengths)), cfg.max_tokens, system)
            for i in range(first_id, first_id + n)]


# ---- HTTP -------------------------------------------------------------------------------------------
def _headers(cfg: Config) -> dict:
    return {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}


def preflight(cfg: Config) -> str:
    """GET /v1/models: the model to ask for. An unreachable server, a refused key or a server that
    is not OpenAI-compatible is one line, before any load."""
    import httpx
    try:
        r = httpx.get(cfg.url + "/models", headers=_headers(cfg), timeout=10)
    except httpx.HTTPError as e:
        raise ValueError(f"cannot reach {cfg.url}: {type(e).__name__}: {str(e) or 'no answer'} "
                         "(is `tinyinfer serve` running there?)") from None
    if r.status_code == 401:
        raise ValueError(f"{cfg.url} refused the API key (401): pass the server's key with --api-key"
                         if cfg.api_key else f"{cfg.url} needs an API key (401): pass it with --api-key")
    if r.status_code != 200:
        raise ValueError(f"{cfg.url}/models answered {r.status_code}: is this an OpenAI-compatible server?")
    try:
        names = [m["id"] for m in r.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{cfg.url}/models did not list models: is this an OpenAI-compatible server?") from None
    if cfg.model is not None and cfg.model not in names:
        raise ValueError(f"--model {cfg.model!r}: the server serves {', '.join(names) or 'no model'}")
    if not names:
        raise ValueError(f"{cfg.url} serves no model")
    return cfg.model or names[0]


def server_stats(cfg: Config) -> dict | None:
    """GET /v1/stats (tinyinfer serve's pool and queues), or None where the server has none."""
    import httpx
    try:
        r = httpx.get(cfg.url + "/stats", headers=_headers(cfg), timeout=10)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def settle(cfg: Config) -> dict | None:
    """Wait (up to cfg.settle seconds) for the server to have nothing pending and every KV block
    free; its stats then, with `settled` and `waited_s`. None without /v1/stats."""
    t0 = time.perf_counter()
    while True:
        s = server_stats(cfg)
        if s is None:
            return None
        done = not (s.get("pending") or s.get("running") or s.get("waiting")) and s["free_blocks"] == s["total_blocks"]
        waited = time.perf_counter() - t0
        if done or waited >= cfg.settle:
            return {**s, "settled": done, "waited_s": waited}
        time.sleep(0.05)


def client_for(cfg: Config, concurrency: int):
    """An AsyncOpenAI client with room for `concurrency` connections (httpx's default pool holds 100:
    the rest would wait in the client, not the server) and no retries (a retry hides a failure and
    sends the request twice)."""
    import httpx
    import openai
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    http = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(cfg.timeout, connect=10.0))
    return openai.AsyncOpenAI(base_url=cfg.url, api_key=cfg.api_key or "none", max_retries=0, timeout=cfg.timeout,
                              http_client=http)


def opener(client, model: str, cfg: Config):
    """open_stream(request) for day 53's timed_request: create() returns when the response's
    headers are in; the stream's events become Chunks (one per token, None text for the others)."""
    async def open_stream(req: Request):
        kw = dict(model=model, max_tokens=req.max_tokens, temperature=cfg.temperature, stream=True,
                  stream_options={"include_usage": True}, user=f"loadtest-{req.id}",
                  extra_body={"ignore_eos": True} if cfg.ignore_eos else None)
        if cfg.chat:
            messages = ([{"role": "system", "content": req.system}] if req.system else []) + \
                [{"role": "user", "content": req.prompt}]
            stream = await client.chat.completions.create(messages=messages, **kw)
        else:
            prompt = f"{req.system}\n{req.prompt}" if req.system else req.prompt
            stream = await client.completions.create(prompt=prompt, **kw)
        return chunks(stream, cfg.chat)
    return open_stream


async def chunks(stream, chat: bool):
    async for c in stream:
        usage = Usage(c.usage.prompt_tokens, c.usage.completion_tokens) if c.usage else None
        if not c.choices:
            yield Chunk(None, None, usage, c.id)
            continue
        ch = c.choices[0]
        if chat:   # the first event carries the role and no token
            d = ch.delta
            text = None if d.role and not d.content and ch.finish_reason is None else (d.content or "")
        else:
            text = ch.text or ""
        yield Chunk(text, ch.finish_reason, usage, c.id)


# ---- one run ----------------------------------------------------------------------------------------
class Level:
    """What one level has measured so far (kept while it runs, so Ctrl-C can report it)."""

    def __init__(self, concurrency: int, requests: list[Request]):
        self.concurrency, self.requests = concurrency, requests
        self.records, self.started = [], set()
        self.t0 = self.t1 = None

    @property
    def seconds(self) -> float:
        return 0.0 if self.t0 is None else (self.t1 or time.perf_counter()) - self.t0


async def run_level(ops, cfg: Config, model: str, level: Level, label: str, progress: bool) -> None:
    from tqdm import tqdm
    client = client_for(cfg, level.concurrency)
    open_stream = opener(client, model, cfg)
    bar = tqdm(total=len(level.requests), desc=label, file=sys.stderr, disable=not progress, leave=False,
               dynamic_ncols=True)

    async def send(req: Request):
        level.started.add(req.id)
        try:
            return await ops.timed_request(open_stream, req)
        finally:
            bar.update()
    try:
        level.t0 = time.perf_counter()
        await ops.drive(level.requests, level.concurrency, send, level.records)
    finally:
        level.t1 = time.perf_counter()
        bar.close()
        await client.close()


def summarize(ops, level: Level, interrupted: bool, before: dict | None, after: dict | None) -> dict:
    """A level's entry of the report: the track's latency_stats over its records and the server's pool."""
    planned = [r.id for r in level.requests]
    note = None
    if interrupted:            # what never finished was stopped, not lost
        done = {r.id for r in level.records}
        note = {"in_flight": len(level.started - done), "not_sent": len(planned) - len(level.started)}
        planned = [i for i in planned if i in done]
    stats = ops.latency_stats(level.records, planned, level.seconds)
    prompt = [r.prompt_tokens for r in level.records if r.ok and r.prompt_tokens is not None]
    out = {"concurrency": level.concurrency, "stats": asdict(stats), "interrupted": note,
           "prompt_tokens_mean": sum(prompt) / len(prompt) if prompt else None,
           "pool_after": None, "cached_tokens": None, "records": [asdict(r) for r in level.records]}
    if after is not None:
        out["pool_after"] = {k: after.get(k) for k in ("free_blocks", "total_blocks", "settled", "waited_s",
                                                         "pending", "running", "waiting")}
        if before is not None and after.get("cached_tokens") is not None:
            out["cached_tokens"] = after["cached_tokens"] - before.get("cached_tokens", 0)
    return out


def run(cfg: Config, *, track: str | None = None, ops=None, progress: bool = True, log=print) -> dict:
    """Every level in order (after the warm-up); the report (see markdown()). report['interrupted']
    is True when Ctrl-C stopped it: the levels measured so far are in it, the last one partial."""
    from shared.course import registry
    check(cfg)
    if ops is None:
        ops = registry.Ops(track)
    model = preflight(cfg)
    start = server_stats(cfg)
    report = {"meta": {"url": cfg.url, "model": model, "date": _dt.datetime.now().isoformat(timespec="seconds"),
                       "levels": list(cfg.levels), "requests": [cfg.per_level(c) for c in cfg.levels],
                       "max_tokens": cfg.max_tokens, "prompt_lengths": list(cfg.prompt_lengths),
                       "shared_prefix": cfg.shared_prefix, "seed": cfg.seed, "chat": cfg.chat,
                       "temperature": cfg.temperature, "ignore_eos": cfg.ignore_eos, "warmup": 0,
                       "measured_by": _measured_by(ops, track), "server": start},
              "levels": [], "interrupted": False}
    if start and start.get("max_pending") and max(cfg.levels) > start["max_pending"]:
        log(f"note: concurrency {max(cfg.levels)} is over the server's max_pending {start['max_pending']}: "
            "expect 503s (tinyinfer serve --max-pending)", file=sys.stderr)
    next_id, current = 0, None
    try:
        top = max(cfg.levels)
        n = top if cfg.warmup is None else cfg.warmup
        if n:
            warm = Level(top, make_requests(cfg, n, next_id, "warmup"))
            next_id += n
            asyncio.run(run_level(ops, cfg, model, warm, f"warm-up C={top}", progress))
            report["meta"]["warmup"] = n
            settle(cfg)
        for c in cfg.levels:
            current = Level(c, make_requests(cfg, cfg.per_level(c), next_id, f"level/{c}"))
            next_id += len(current.requests)
            before = server_stats(cfg)
            asyncio.run(run_level(ops, cfg, model, current, f"C={c}", progress))
            entry = summarize(ops, current, False, before, settle(cfg))
            report["levels"].append(entry)
            current = None
            log(line(entry), file=sys.stderr)
    except KeyboardInterrupt:
        report["interrupted"] = True
        if current is not None:
            report["levels"].append(summarize(ops, current, True, None, settle(cfg)))
    return report


def _measured_by(ops, track) -> str:
    try:
        return ops.source("latency_stats").describe(ops.track)
    except AttributeError:        # a module passed as ops (a checker's day)
        return getattr(ops, "__name__", str(ops))


def line(entry: dict) -> str:
    s = entry["stats"]
    return (f"C={entry['concurrency']}: {s['ok']}/{s['requests']} ok, {s['failed']} failed, {s['lost']} lost, "
            f"{s['duplicated']} duplicated; {s['output_tok_s']:.1f} tok/s, {s['req_s']:.2f} req/s; "
            f"TTFT p50 {_ms(s['ttft_p50'])} ms p99 {_ms(s['ttft_p99'])} ms; ITL p50 {_ms(s['itl_p50'])} ms")


def problems(report: dict) -> list[str]:
    """What the run found wrong: failed, lost or duplicated requests, a pool not back to full."""
    out = []
    for e in report["levels"]:
        s, pool, c = e["stats"], e["pool_after"], e["concurrency"]
        for what in ("failed", "lost", "duplicated"):
            if s[what]:
                out.append(f"C={c}: {s[what]} {what} of {s['requests']}")
        if pool is not None and not pool["settled"]:
            out.append(f"C={c}: the server's pool was not back to full after {pool['waited_s']:.0f} s "
                       f"({pool['free_blocks']}/{pool['total_blocks']} blocks free, {pool['pending']} pending)")
    return out


# ---- the report -------------------------------------------------------------------------------------
def _ms(x) -> str:
    return "–" if x is None else f"{x * 1e3:,.1f}"


def markdown(report: dict) -> str:
    m = report["meta"]
    srv = m.get("server") or {}
    lines = [f"# Load test: {m['model']} at {m['url']}", "",
             f"{m['date']} · closed loop (each of C clients sends its next request when its last one ends) · "
             f"{'chat' if m['chat'] else 'completions'}, streaming · max_tokens {m['max_tokens']}"
             f"{' (ignore_eos)' if m['ignore_eos'] else ''} · prompts of {', '.join(map(str, m['prompt_lengths']))} "
             f"words" + (f" after a shared prefix of {m['shared_prefix']} words" if m["shared_prefix"] else "")
             + f" · seed {m['seed']} · temperature {m['temperature']} · warm-up {m['warmup']} requests · "
             f"measured by {m['measured_by']}", ""]
    if srv:
        lines += [f"Server: {srv.get('total_blocks')} KV blocks of {srv.get('block_size')} tokens, "
                  f"{srv.get('max_num_seqs')} rows, max_pending {srv.get('max_pending')}, prefix cache "
                  f"{'on' if srv.get('prefix_cache') else 'off'}.", ""]
    else:
        lines += ["Server: no /v1/stats (not tinyinfer serve?): the pool after each level is not known.", ""]
    if report["interrupted"]:
        lines += ["**Interrupted (Ctrl-C)**: the last level is partial; its requests in flight were stopped, "
                  "not lost.", ""]
    lines += ["| C | requests | ok | failed | lost | duplicated | output tok/s | req/s | TTFT p50 ms | TTFT p90 ms | "
              "TTFT p99 ms | ITL p50 ms | ITL p90 ms | ITL p99 ms | prompt tokens | pool after |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in report["levels"]:
        s, pool = e["stats"], e["pool_after"]
        where = ("–" if pool is None else f"{pool['free_blocks']}/{pool['total_blocks']} free"
                 + ("" if pool["settled"] else " (NOT back)"))
        cut = " (interrupted)" if e["interrupted"] else ""
        pt = "–" if e["prompt_tokens_mean"] is None else f"{e['prompt_tokens_mean']:.0f}"
        lines.append(f"| {e['concurrency']}{cut} | {s['requests']} | {s['ok']} | {s['failed']} | {s['lost']} | "
                     f"{s['duplicated']} | {s['output_tok_s']:,.1f} | {s['req_s']:,.2f} | "
                     + " | ".join(_ms(s[f"{k}_p{p}"]) for k in ("ttft", "itl") for p in PCTS)
                     + f" | {pt} | {where} |")
    lines += ["", "TTFT: from sending a request to its first token's event; ITL: the gaps between a request's "
              "consecutive token events, pooled over the level; both over ok requests. Output tokens from the "
              "server's usage. Percentiles linear between ranks; p99 of fewer than 100 samples is about the "
              "largest one."]
    cached = [e for e in report["levels"] if e.get("cached_tokens")]
    if cached:
        lines += ["", "Prompt tokens served from the prefix cache: " + ", ".join(
            f"C={e['concurrency']}: {e['cached_tokens']:,}" for e in cached) + "."]
    for e in report["levels"]:
        if e["stats"]["errors"]:
            lines += ["", f"Errors at C={e['concurrency']}:"]
            lines += [f"- {n} × {msg}" for msg, n in e["stats"]["errors"].items()]
        if e["interrupted"]:
            lines += ["", f"C={e['concurrency']} interrupted: {e['interrupted']['in_flight']} in flight, "
                      f"{e['interrupted']['not_sent']} not sent."]
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> list[Path]:
    """throughput_vs_concurrency.png and latency_vs_concurrency.png (log2 concurrency)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter
    plain = FuncFormatter(lambda v, _: f"{v:g}")

    def axes_of(ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs), ax.xaxis.set_major_formatter(plain), ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("concurrency (requests in flight)"), ax.grid(alpha=0.3)
    levels = [e for e in report["levels"] if e["stats"]["ok"]]
    if not levels:
        return []
    cs = [e["concurrency"] for e in levels]
    title = f"{report['meta']['model']}, max_tokens {report['meta']['max_tokens']}"
    paths = [out / "throughput_vs_concurrency.png", out / "latency_vs_concurrency.png"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cs, [e["stats"]["output_tok_s"] for e in levels], "o-", color="C0", label="output tok/s")
    axes_of(ax)
    ax.set_ylabel("output tokens / s", color="C0"), ax.set_title(title)
    ax2 = ax.twinx()
    ax2.plot(cs, [e["stats"]["req_s"] for e in levels], "s--", color="C1", label="requests / s")
    ax2.set_ylabel("requests / s", color="C1")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, name in zip(axes, ("ttft", "itl"), ("time to first token", "inter-token latency")):
        for p, style in zip(PCTS, ("o-", "s--", "^:")):
            pts = [(c, e["stats"][f"{kind}_p{p}"]) for c, e in zip(cs, levels)
                   if e["stats"][f"{kind}_p{p}"] is not None]
            if pts:
                ax.plot([c for c, _ in pts], [v * 1e3 for _, v in pts], style, label=f"p{p}")
        axes_of(ax)
        ax.set_yscale("log"), ax.yaxis.set_major_formatter(plain), ax.yaxis.set_minor_formatter(plain)
        ax.set_ylabel("ms"), ax.set_title(name), ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def write(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "loadtest.json", out / "loadtest.md"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    return paths + plot(report, out)


# ---- command line -----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000, "
                   "where `tinyinfer serve` listens)")
    p.add_argument("--concurrency", default=DEFAULT_LEVELS, metavar="C,C,...", help="requests in flight, one "
                   f"level each (default {DEFAULT_LEVELS})")
    p.add_argument("--requests", type=int, default=None, help="requests per level (default 4 x C, at least 16)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default 64)")
    p.add_argument("--prompt-lengths", default=DEFAULT_PROMPT_LENGTHS, metavar="N,N,...", help="prompt lengths in "
                   f"words, one drawn per request (default {DEFAULT_PROMPT_LENGTHS}; the report gives the server's "
                   "token count)")
    p.add_argument("--shared-prefix", type=int, default=0, metavar="N", help="every prompt starts with the same N "
                   "words (a system prompt with --chat): measures the prefix cache (tinyinfer serve --prefix-cache)")
    p.add_argument("--seed", type=int, default=0, help="the prompts' seed (same flags, same prompts)")
    p.add_argument("--api-key", default=None, help="the server's --api-key")
    p.add_argument("--model", default=None, help="the model to ask for (default: the first the server lists)")
    p.add_argument("--chat", action="store_true", help="/v1/chat/completions instead of /v1/completions")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    p.add_argument("--eos", action="store_true", help="let requests stop at EOS (default: ignore_eos, so each makes "
                   "--max-tokens tokens)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take (default 300)")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed requests at the highest "
                   "concurrency first (default: that concurrency; 0: none)")
    p.add_argument("--settle", type=float, default=30.0, help="seconds to wait for the server's pool to be full "
                   "again after each level (default 30)")
    p.add_argument("--out", default="build/loadtest/latest", help="folder for loadtest.json, loadtest.md and the "
                   "plots (default build/loadtest/latest)")
    p.add_argument("--track", choices=("days", "solutions"), default=None,
                   help="whose day 53 measures: 'days' (default: yours once it passes) or 'solutions'")


def config(args: argparse.Namespace) -> Config:
    cfg = Config(url=base_url(args.url), levels=tuple(parse_levels(args.concurrency)), requests=args.requests,
                 max_tokens=args.max_tokens, prompt_lengths=tuple(parse_lengths(args.prompt_lengths)),
                 shared_prefix=args.shared_prefix, seed=args.seed, api_key=args.api_key, model=args.model,
                 chat=args.chat, temperature=args.temperature, ignore_eos=not args.eos, timeout=args.timeout,
                 warmup=args.warmup, settle=args.settle)
    check(cfg)
    return cfg


def run_args(args: argparse.Namespace) -> int:
    """`tinyinfer loadtest`: 0 when every request of every level was ok and the pool came back; 1
    when the run found failed, lost or duplicated requests or a pool not back; 130 on Ctrl-C."""
    cfg = config(args)
    report = run(cfg, track=args.track)
    paths = write(report, Path(args.out))
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    if report["interrupted"]:
        print("interrupted: the levels measured so far are written", file=sys.stderr)
        return 130
    found = problems(report)
    for msg in found:
        print(f"loadtest: {msg}", file=sys.stderr)
    return 1 if found else 0
