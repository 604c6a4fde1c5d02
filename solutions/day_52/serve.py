"""Day 52: serving -- an OpenAI-compatible HTTP server with SSE streaming.

vLLM's api_server shape, small: ONE engine loop (a thread that owns day 51's LLM runner and one
continuous batching scheduler) serves every HTTP request, so concurrent requests share the batch.
An HTTP handler checks the request, submits it (prompt ids + SamplingParams) and awaits its own
asyncio queue, which the loop fills with the request's tokens (loop.call_soon_threadsafe). A
streaming response sends each piece of text as an SSE chunk `data: {...}` and ends with
`data: [DONE]`; a client that goes away cancels the handler, and its `finally` aborts the request
so its KV blocks go back. Bad input is a 4xx with an OpenAI error object, never a 500.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import queue
import secrets
import threading
import time

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from shared.engine.sequence import SamplingParams
from shared.reference.scheduler import Request

MAX_BODY = 1 << 20                 # bytes: a bigger body is refused (413) before it is parsed


class APIError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class AsyncLLM:
    """One engine loop shared by every request. submit() (in the event loop) -> (id, asyncio.Queue);
    the queue gets (token_id, finish_reason) per token, then None when the request is done.
    abort(id): the client went away. max_pending: the most unfinished requests; one more is refused
    (503), the others are queued by the scheduler (FCFS) until rows and blocks free up."""

    def __init__(self, llm, *, max_pending: int | None = None):
        self.llm = llm
        self.max_pending = max_pending or 8 * llm.max_num_seqs
        self.sched = llm.scheduler()                   # one scheduler for the server's lifetime
        self.inbox: queue.Queue = queue.Queue()        # ("add", request) | ("abort", id) | None (stop)
        self.outs: dict = {}                           # id -> (event loop, asyncio.Queue)
        self.ids = itertools.count()
        self.num_aborted = 0
        self.error: BaseException | None = None       # why the loop stopped, if it failed
        self.thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.thread.start()

    @property
    def pending(self) -> int:
        return len(self.outs)

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing running, every block back in the pool."""
        r = self.llm.runner
        return not self.outs and self.inbox.empty() and not self.sched.has_work and r.num_free == r.cache.num_blocks

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, asyncio.Queue]:
        if self.error is not None:
            raise self.error
        (checked,) = self.llm.requests([prompt_ids], params)    # one-line ValueError: the context, the vocab
        if self.pending >= self.max_pending:
            raise APIError(503, f"the server is busy: {self.pending} requests are queued or running "
                           f"(--max-pending {self.max_pending}); try again shortly", "server_busy")
        rid = next(self.ids)
        q: asyncio.Queue = asyncio.Queue()
        self.outs[rid] = (asyncio.get_running_loop(), q)
        self.inbox.put(("add", Request(rid, checked.prompt_ids, params, checked.eos_token_ids)))
        return rid, q

    def abort(self, rid) -> None:
        if self.outs.pop(rid, None) is not None:
            self.inbox.put(("abort", rid))

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=60)

    def _send(self, rid, item) -> None:
        target = self.outs.get(rid)
        if target is not None:
            loop, q = target
            loop.call_soon_threadsafe(q.put_nowait, item)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:     # the loop died: every waiting request hears why, none hangs
            self.error = e
            for rid in list(self.outs):
                self._send(rid, e)

    def _loop(self) -> None:
        while True:
            block = not self.sched.has_work               # nothing to step: sleep until a message
            while True:
                try:
                    msg = self.inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                if msg is None:
                    return
                kind, x = msg
                if kind == "add":
                    try:
                        self.sched.add(x)
                    except ValueError as e:      # the scheduler's own refusal: this request only
                        self._send(x.id, APIError(400, str(e).splitlines()[0]))
                        self.outs.pop(x.id, None)
                elif self.sched.abort(x):
                    self.num_aborted += 1
            if not self.sched.has_work:
                continue
            try:
                outputs = self.sched.step()
            except Exception as e:        # the engine failed: every request gets the error, the server lives
                for rid in list(self.outs):
                    self.sched.abort(rid)
                    self._send(rid, APIError(500, f"the engine failed: {type(e).__name__}: {e}", "server_error"))
                continue
            for o in outputs:
                self._send(o.request_id, (o.token_id, o.finish_reason))
                if o.finish_reason is not None:
                    self._send(o.request_id, None)
                    self.outs.pop(o.request_id, None)


# ---- the HTTP side ---------------------------------------------------------------------------
def read_json(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the body is not valid UTF-8: byte 0x{raw[e.start]:02x} at position {e.start}")
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise APIError(400, f"the body is not valid JSON: {getattr(e, 'msg', 'nested too deep')} "
                            f"at line {getattr(e, 'lineno', 1)} column {getattr(e, 'colno', 1)}")
    if not isinstance(body, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def field(body: dict, name: str, types, default=None, required: bool = False):
    """body[name] checked against types (bool is not a number here); None counts as missing."""
    value = body.get(name)
    if value is None:
        if required:
            raise APIError(400, f"'{name}' is required", param=name)
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise APIError(400, f"'{name}' must be {_names(types)}, got a boolean", param=name)
    if not isinstance(value, types):
        raise APIError(400, f"'{name}' must be {_names(types)}, got {type(value).__name__}", param=name)
    return value


def _names(types) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in types if not (t is int and float in types))


def sampling(body: dict, prompt_len: int, max_len: int, default_max: int | None) -> SamplingParams:
    """The request's SamplingParams; every bad value is a 400 naming its field. max_tokens: the
    most new tokens (default_max, or up to the context when None); prompt + max_tokens <= max_len."""
    n = field(body, "n", int, 1)
    if n != 1:
        raise APIError(400, f"n must be 1: this server returns one choice per request, got {n}", param="n")
    if body.get("stop") not in (None, [], ""):
        raise APIError(400, "'stop' is not supported: generation stops at EOS or max_tokens", param="stop")
    if prompt_len >= max_len:
        raise APIError(400, f"the prompt is {prompt_len} tokens: the context limit is {max_len}, leaving no room "
                            "for new tokens", param="prompt")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = field(body, name, int, default_max or max_len - prompt_len)
    if max_tokens < 1:
        raise APIError(400, f"'{name}' must be at least 1, got {max_tokens}", param=name)
    if prompt_len + max_tokens > max_len:
        raise APIError(400, f"{prompt_len} prompt tokens + {name} {max_tokens} = {prompt_len + max_tokens} exceeds "
                            f"the context limit {max_len}", param=name)
    temperature = field(body, "temperature", (int, float), 1.0)
    top_p = field(body, "top_p", (int, float), 1.0)
    for k, v, ok in (("temperature", temperature, 0 <= temperature <= 2), ("top_p", top_p, 0 < top_p <= 1)):
        if not ok:
            raise APIError(400, f"'{k}' must be in {'[0, 2]' if k == 'temperature' else '(0, 1]'}, got {v}", param=k)
    top_k = field(body, "top_k", int, 0)
    seed = field(body, "seed", int, None)
    try:
        return SamplingParams(float(temperature), top_k, float(top_p), max_tokens,
                              ignore_eos=field(body, "ignore_eos", bool, False), seed=seed)
    except ValueError as e:
        raise APIError(400, str(e))


def make_app(llm, *, model_name: str = "tinyinfer", api_key: str | None = None, max_pending: int | None = None):
    """A FastAPI app over one AsyncLLM: /v1/models, /v1/completions, /v1/chat/completions."""
    engine = None

    async def lifespan(app):
        nonlocal engine
        engine = app.state.engine = AsyncLLM(llm, max_pending=max_pending)
        yield
        engine.close()

    app = FastAPI(title="tinyinfer", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)          # 404, 405: the same error object
    async def http_error(request, e):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)              # never a traceback on the wire
    async def any_error(request, e):
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", "server_error").body(),
                            status_code=500)

    def authorize(request: HTTPRequest) -> None:
        if api_key is not None and not secrets.compare_digest(request.headers.get("authorization", ""),
                                                              f"Bearer {api_key}"):
            raise APIError(401, "missing or wrong API key: send Authorization: Bearer KEY",
                           "authentication_error", code="invalid_api_key")

    async def body_of(request: HTTPRequest) -> dict:
        authorize(request)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            raise APIError(413, f"the body is {int(size)} bytes: the limit is {MAX_BODY}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise APIError(413, f"the body is over {MAX_BODY} bytes")
        body = read_json(bytes(raw))
        model = field(body, "model", str, required=True)
        if model != model_name:
            raise APIError(404, f"model '{model}' does not exist: this server serves '{model_name}'",
                           param="model", code="model_not_found")
        return body

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "tinyinfer", "max_model_len": llm.max_len}]}

    @app.get("/v1/stats")
    async def stats(request: HTTPRequest):
        """Read-only, not OpenAI's: the pool and the queues now (day 53's load test checks that every
        block is back after a run). Counts read from the engine thread's objects without a lock:
        each is a whole number, possibly one step old."""
        authorize(request)
        r, sched = llm.runner, engine.sched
        return {"object": "stats", "free_blocks": r.num_free, "total_blocks": r.cache.num_blocks,
                "block_size": r.block_size, "running": len(getattr(sched, "running", ())),
                "waiting": len(getattr(sched, "waiting", ())), "pending": engine.pending,
                "max_pending": engine.max_pending, "aborted": engine.num_aborted,
                "prefix_cache": r.prefix is not None, "cached_tokens": r.cached_tokens,
                "max_num_seqs": llm.max_num_seqs, "max_len": llm.max_len}

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await body_of(request)
        prompt = field(body, "prompt", (str, list), required=True)
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list) and not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise APIError(400, "'prompt' must be a string or a list of token ids (one prompt per request)",
                           param="prompt")
        ids = llm.engine.prompt_ids(prompt) if isinstance(prompt, str) else prompt
        if not ids:
            raise APIError(400, "'prompt' is empty: give at least one token", param="prompt")
        return await respond(body, ids, sampling(body, len(ids), llm.max_len, 16), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await body_of(request)
        messages = field(body, "messages", list, required=True)
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                   and isinstance(m.get("content"), str) for m in messages):
            raise APIError(400, "'messages' must be a non-empty list of {role, content} with string values",
                           param="messages")
        try:                           # the model's template (sandboxed) may refuse a role or an order
            text = llm.tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages])
        except Exception as e:
            raise APIError(400, f"the chat template refused these messages: {str(e).strip().splitlines()[0]}",
                           param="messages")
        ids = llm.tokenizer.encode(text)
        return await respond(body, ids, sampling(body, len(ids), llm.max_len, None), chat=True)

    async def respond(body: dict, ids: list[int], params: SamplingParams, chat: bool):
        stream = field(body, "stream", bool, False)
        usage_in_stream = bool(field(body, "stream_options", dict, {}).get("include_usage"))
        try:
            rid, q = engine.submit(ids, params)
        except ValueError as e:
            raise APIError(400, str(e).splitlines()[0])
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}", "created": int(time.time()),
                "model": model_name}
        if stream:
            return StreamingResponse(sse(rid, q, head, len(ids), chat, usage_in_stream), media_type="text/event-stream")
        try:
            text, tokens, reason = [], 0, None
            detok = llm.tokenizer.detokenizer()
            while True:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                tokens += 1
                text.append(detok.push(item[0]))
                reason = item[1] or reason
        finally:
            engine.abort(rid)          # a no-op once finished; if this handler is cancelled, the blocks go back
        choice = ({"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "logprobs": None,
                   "finish_reason": reason} if chat else
                  {"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": reason})
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
                "usage": usage(len(ids), tokens)}

    async def sse(rid, q, head, prompt_tokens, chat, usage_in_stream):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece, reason, first=False):
            if chat:
                delta = {"role": "assistant", "content": piece} if first else {"content": piece}
                c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                c = {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason}
            return f"data: {json.dumps({**head, 'object': obj, 'choices': [c]})}\n\n"

        detok, tokens = llm.tokenizer.detokenizer(), 0
        try:
            if chat:
                yield chunk("", None, first=True)
            while True:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):     # the engine failed: say so in the stream
                    err = item if isinstance(item, APIError) else APIError(500, str(item), "server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                tokens += 1
                yield chunk(detok.push(item[0]), item[1])
            if usage_in_stream:
                yield f"data: {json.dumps({**head, 'object': obj, 'choices': [], 'usage': usage(prompt_tokens, tokens)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:                       # the client disconnected (cancelled here) or we are done
            engine.abort(rid)

    return app


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def serve(llm, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_name: str = "tinyinfer", max_pending: int | None = None) -> None:
    """Run the server until Ctrl-C (uvicorn, one process, one event loop, one engine thread)."""
    import uvicorn
    uvicorn.run(make_app(llm, model_name=model_name, api_key=api_key, max_pending=max_pending),
                host=host, port=port, log_level="info")
