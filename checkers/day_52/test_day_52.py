"""Day 52 checker: serving -- an OpenAI-compatible HTTP server with SSE streaming. Run: pytest checkers/day_52

Your make_app(llm) runs under uvicorn on 127.0.0.1 (a free port) inside the test, over the tiny
model's LLM (day 51: your code if finished, else the reference), and the official `openai` client
talks to it. The oracle is LLM.generate on the same LLM for the same prompt and params:
- /v1/completions and /v1/chat/completions (chat template), sync and async, streaming and not: the
  text == generate's, finish_reason == generate's, usage == the token counts; streamed pieces add up
  to the same text, with usage in a final chunk when asked and `data: [DONE]` last;
- concurrent requests (one engine loop, continuous batching) each get their own text;
- /v1/models lists the model; --api-key: no or a wrong bearer token is a 401;
- bad input (malformed JSON, missing/wrong-typed fields, max_tokens <= 0 or over the context, n > 1,
  negative temperature, top_p outside (0, 1], a prompt over the context, invalid UTF-8, a 10 MB
  body): a 4xx with an OpenAI error object, never a 500;
- a client that disconnects mid-stream: its request is aborted and the pool is empty again;
- more requests than the server takes: the extra ones get a 503 with a message, the others their
  text, and the server serves the next request.
"""
import asyncio
import contextlib
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from shared.engine import SamplingParams  # noqa: E402

MODEL = "tiny-test"
KEY = "sk-day52"
MAX_LEN = 48
TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """make_app(...) under uvicorn in a thread on 127.0.0.1: .url, .app; stop() shuts it down.
    A part of the app that raises NotImplementedError (the untouched stub) answers 501 here, and
    the clients below raise that NotImplementedError in the test, so it names what to fill in."""

    def __init__(self, app):
        from fastapi.responses import JSONResponse
        self.app, self.port, self.todo, self.where = app, free_port(), None, {}

        async def not_written(request, e):
            tb = e.__traceback__             # the innermost frame: the function to fill in
            while tb.tb_next is not None:
                tb = tb.tb_next
            self.where.setdefault(str(e), tb)  # the first time: a re-raised one may have lost its frames
            self.todo = (str(e), self.where[str(e)])
            return JSONResponse({"error": {"message": str(e), "type": "not_implemented"}}, status_code=501)
        app.add_exception_handler(NotImplementedError, not_written)
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() - t0 < 60, "the server did not start"
            time.sleep(0.05)

    @property
    def engine(self):
        return self.app.state.engine

    def wait_idle(self, limit=TIMEOUT):
        """Until the engine has nothing queued or running and every block is back (or limit s)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self.engine.idle:
                return True
            time.sleep(0.1)
        return False

    def _hook(self, response):
        if response.status_code == 501 and self.todo is not None:
            message, tb = self.todo
            raise NotImplementedError(message).with_traceback(tb)

    async def _ahook(self, response):
        self._hook(response)

    def http(self):
        """An httpx.Client for this server (a stub's NotImplementedError is raised here)."""
        return httpx.Client(base_url=self.url, timeout=TIMEOUT, event_hooks={"response": [self._hook]})

    def ahttp(self):
        return httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT, event_hooks={"response": [self._ahook]})

    def openai(self, key=KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, timeout=TIMEOUT, max_retries=0,
                             http_client=self.http())

    def aopenai(self, key=KEY):
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, timeout=TIMEOUT, max_retries=0,
                                  http_client=self.ahttp())

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the server did not shut down"


@pytest.fixture(scope="module")
def llm(ops, tiny_model, track):
    return ops.LLM(str(tiny_model), track=track, max_num_seqs=4, max_len=MAX_LEN, num_blocks=24, block_size=4)


@pytest.fixture(scope="module")
def server(day, llm):
    s = Running(day.make_app(llm, model_name=MODEL, api_key=KEY))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def expected(llm, prompt, chat=False, **kw):
    kw.setdefault("temperature", 0.0)
    return llm.generate([prompt], SamplingParams(**kw), chat=chat, progress=False)[0]


def check_usage(u, prompt_tokens, out):
    assert u is not None, "a response carries usage"
    assert u.prompt_tokens == prompt_tokens, f"usage.prompt_tokens {u.prompt_tokens}, the prompt has {prompt_tokens}"
    assert u.completion_tokens == len(out["token_ids"]), \
        f"usage.completion_tokens {u.completion_tokens}, {len(out['token_ids'])} tokens were generated"
    assert u.total_tokens == prompt_tokens + len(out["token_ids"])


def test_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL], f"/v1/models lists the served model once, got {ids}"


def test_completion(client, llm, server):
    prompt = "the tiny llama"
    for kw in (dict(max_tokens=6, temperature=0.0), dict(max_tokens=5, temperature=0.9, top_p=0.8, seed=7)):
        out = expected(llm, prompt, **kw)
        r = client.completions.create(model=MODEL, prompt=prompt, **kw)
        assert r.object == "text_completion" and len(r.choices) == 1
        assert r.choices[0].text == out["text"], f"{kw}: the text differs from LLM.generate's"
        assert r.choices[0].finish_reason == out["finish_reason"]
        check_usage(r.usage, len(llm.engine.prompt_ids(prompt)), out)
    ids = [5, 9, 33, 2]
    out = expected(llm, ids, max_tokens=4)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert r.choices[0].text == out["text"], "a prompt of token ids is served as those ids"
    check_usage(r.usage, len(ids), out)
    assert server.wait_idle(), "after the requests every KV block is back"


def test_completion_stream(client, llm):
    prompt = "héllo wörld"
    out = expected(llm, prompt, max_tokens=7)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [c for c in chunks if c.choices]
    assert len(pieces) >= 2, "a stream sends the text as it is generated, one chunk per token"
    assert "".join(c.choices[0].text for c in pieces) == out["text"], "the streamed pieces add up to the text"
    assert pieces[-1].choices[0].finish_reason == out["finish_reason"], "the last piece carries finish_reason"
    assert all(c.choices[0].finish_reason is None for c in pieces[:-1]), "only the last piece finishes"
    assert chunks[-1].usage is not None and not chunks[-1].choices, "include_usage: a final chunk with usage"
    check_usage(chunks[-1].usage, len(llm.engine.prompt_ids(prompt)), out)


def test_chat(client, llm):
    msg = "say hi"
    out = expected(llm, msg, chat=True, max_tokens=6)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": msg}], max_tokens=6,
                                       temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == out["text"], "chat: the text of the prompt rendered by the chat template"
    assert r.choices[0].finish_reason == out["finish_reason"]
    check_usage(r.usage, len(llm.engine.prompt_ids(msg, chat=True)), out)
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": msg}],
                                            max_tokens=6, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == out["text"], "chat streaming: the deltas add up to the text"


def test_async_concurrent(server, llm):
    """Four requests at once, two streaming: one engine loop batches them; each gets its own text."""
    prompts = ["cat", "the batch step", [7, 8, 9], "naïve 日本"]
    outs = [expected(llm, p, max_tokens=5 + i) for i, p in enumerate(prompts)]

    async def run():
        c = server.aopenai()

        async def one(i, p):
            if i % 2:
                s = await c.completions.create(model=MODEL, prompt=p, max_tokens=5 + i, temperature=0, stream=True)
                return "".join([ch.choices[0].text async for ch in s if ch.choices])
            r = await c.completions.create(model=MODEL, prompt=p, max_tokens=5 + i, temperature=0)
            return r.choices[0].text
        try:
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        finally:
            await c.close()

    texts = asyncio.run(run())
    for i, (t, o) in enumerate(zip(texts, outs)):
        assert t == o["text"], f"concurrent request {i} got another text than alone: the requests are mixed up"
    assert server.wait_idle(), "after the requests every KV block is back"


def test_api_key(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = server.http().get("/v1/models", headers=headers)
        assert r.status_code == 401, f"without the right bearer token: 401, got {r.status_code}"
        assert "message" in r.json().get("error", {}), "an OpenAI-style error object"
    bad = server.openai(key="nope")
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt="x", max_tokens=1)


BAD = [
    ("malformed JSON", b'{"model": "tiny-test", "prompt": "x",'),
    ("a body that is not an object", b'["model"]'),
    ("missing prompt", {"model": MODEL, "max_tokens": 2}),
    ("missing model", {"prompt": "x", "max_tokens": 2}),
    ("prompt of the wrong type", {"model": MODEL, "prompt": 3, "max_tokens": 2}),
    ("max_tokens a string", {"model": MODEL, "prompt": "x", "max_tokens": "2"}),
    ("max_tokens 0", {"model": MODEL, "prompt": "x", "max_tokens": 0}),
    ("max_tokens -1", {"model": MODEL, "prompt": "x", "max_tokens": -1}),
    ("max_tokens over the context", {"model": MODEL, "prompt": "x", "max_tokens": MAX_LEN}),
    ("n = 2", {"model": MODEL, "prompt": "x", "max_tokens": 2, "n": 2}),
    ("negative temperature", {"model": MODEL, "prompt": "x", "max_tokens": 2, "temperature": -0.5}),
    ("top_p 0", {"model": MODEL, "prompt": "x", "max_tokens": 2, "top_p": 0}),
    ("top_p 1.5", {"model": MODEL, "prompt": "x", "max_tokens": 2, "top_p": 1.5}),
    ("a prompt over the context", {"model": MODEL, "prompt": [5] * (MAX_LEN + 3), "max_tokens": 1}),
    ("a token id outside the vocabulary", {"model": MODEL, "prompt": [5, 10**9], "max_tokens": 1}),
    ("stream not a boolean", {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": "yes"}),
    ("an unknown model", {"model": "gpt-9", "prompt": "x", "max_tokens": 2}),
    ("invalid UTF-8", b'{"model": "tiny-test", "prompt": "\xff\xfe", "max_tokens": 2}'),
]


@pytest.mark.parametrize("what,body", BAD, ids=[b[0] for b in BAD])
def test_bad_input(server, what, body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = server.http().post("/v1/completions", content=raw,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, f"{what}: a 4xx, got {r.status_code}: {r.text[:200]}"
    err = r.json().get("error")
    assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], \
        f"{what}: an OpenAI-style error object {{'error': {{'message': ...}}}}, got {r.text[:200]}"
    assert "Traceback" not in r.text


def test_huge_body_is_refused_unread(server):
    """A 10 MB body: 413 (Payload Too Large) with an error object, before it is parsed or tokenized."""
    raw = json.dumps({"model": MODEL, "prompt": "a " * (5 << 20), "max_tokens": 2}).encode()
    r = server.http().post("/v1/completions", content=raw, headers={"Authorization": f"Bearer {KEY}",
                                                                     "Content-Type": "application/json"})
    assert r.status_code == 413, f"a 10 MB body: 413, got {r.status_code}: {r.text[:200]}"
    assert r.json()["error"]["message"]


def test_raw_sse(server, llm):
    """The wire format: `data: {json}` events, one per token (+ usage when asked), `data: [DONE]` last."""
    out = expected(llm, "wire", max_tokens=4)
    body = {"model": MODEL, "prompt": "wire", "max_tokens": 4, "temperature": 0, "stream": True}
    with server.http() as c, c.stream("POST", "/v1/completions", json=body,
                                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.strip()]
    assert all(e.startswith("data: ") for e in events), f"every SSE line is a data: event, got {events[:3]}"
    assert events[-1] == "data: [DONE]", f"the stream ends with data: [DONE], got {events[-1]!r}"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) == len(out["token_ids"]), "one event per generated token"
    assert "".join(c["choices"][0]["text"] for c in chunks) == out["text"]


def test_bad_chat(server):
    for body in ({"model": MODEL, "max_tokens": 2}, {"model": MODEL, "messages": "hi", "max_tokens": 2},
                 {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_LEN}):
        r = server.http().post("/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {KEY}"})
        assert 400 <= r.status_code < 500 and "message" in r.json().get("error", {}), f"{body}: {r.status_code}"
    r = server.http().get("/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["message"], "an unknown path: 404 with an error object"
    assert server.wait_idle(), "refused requests hold no blocks"


def test_disconnect_aborts(server, llm):
    """Read two chunks of a long stream, hang up: the request is aborted, its blocks go back."""
    aborted = server.engine.num_aborted
    body = {"model": MODEL, "prompt": "the cat", "max_tokens": MAX_LEN - 8, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with slow_steps(server):          # 40 steps take 2 s at least: time to notice the hang-up on any machine
        hang_up(server, body)
        assert server.wait_idle(), "after a client hangs up, its request leaves the engine and its blocks go back"
    assert server.engine.num_aborted == aborted + 1, \
        "a client that disconnects mid-stream: its request is aborted, not run to max_tokens"
    r = server.openai().completions.create(
        model=MODEL, prompt="cat", max_tokens=3, temperature=0)
    assert r.choices[0].text == expected(llm, "cat", max_tokens=3)["text"], "the server serves on"


@contextlib.contextmanager
def slow_steps(server, seconds=0.05):
    """Each engine step sleeps first, so a test's timing holds on a slow or busy machine."""
    sched = server.engine.sched
    step = sched.step

    def slow_step():
        time.sleep(seconds)
        return step()
    sched.step = slow_step
    try:
        yield
    finally:
        del sched.step


def hang_up(server, body):
    with server.http() as c:
        with c.stream("POST", "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                    if seen == 2:
                        break


def test_overload(day, llm, server):
    """Six long requests at once on a server that takes 2 pending: the extra ones get a 429/503
    with a message, the accepted ones their text; then the server serves again."""
    busy = Running(day.make_app(llm, model_name=MODEL, max_pending=2))
    try:
        prompt, n, m = "step", 6, MAX_LEN - 8
        out = expected(llm, prompt, max_tokens=m, ignore_eos=True)

        async def run():
            async with busy.ahttp() as c:
                body = {"model": MODEL, "prompt": prompt, "max_tokens": m, "temperature": 0, "ignore_eos": True}
                return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(n)))

        with slow_steps(busy):        # 40 steps take 2 s at least: the six requests arrive while the first run
            rs = asyncio.run(run())
        codes = [r.status_code for r in rs]
        assert all(c in (200, 429, 503) for c in codes), f"a 200, or 429/503 when busy, got {codes}"
        assert 1 <= codes.count(200) <= 2, f"max_pending=2: at most 2 of {n} long requests at once, got {codes}"
        for r in rs:
            if r.status_code == 200:
                assert r.json()["choices"][0]["text"] == out["text"], "an accepted request gets its text"
            else:
                assert r.json()["error"]["message"], "a refusal says why"
        assert busy.wait_idle(), "after the burst every KV block is back"
        r = busy.http().post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
        assert r.status_code == 200, "the server recovers after a burst"
    finally:
        busy.stop()


def test_binds_localhost(day):
    import inspect
    default = inspect.signature(day.serve).parameters["host"].default
    assert default == "127.0.0.1", f"serve binds 127.0.0.1 unless told otherwise, got {default!r}"
