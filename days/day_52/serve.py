"""Day 52 (your code): serving -- an OpenAI-compatible HTTP server with SSE streaming.

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
from shared.reference.scheduler import Request  # noqa: F401 (for submit)

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
        # TODO(day 52): check the request with day 51's checks (self.llm.requests: a one-line
        # ValueError for a prompt over the context or an id outside the vocabulary); refuse one more
        # than self.max_pending unfinished requests with an APIError 503 that says why; then give it
        # a fresh id (self.ids), register an asyncio.Queue for it in self.outs with the running event
        # loop (the engine thread needs both to hand it tokens), and put ("add", Request(...)) in the
        # inbox -- the engine thread alone touches the scheduler.
        raise NotImplementedError("Day 52: AsyncLLM.submit")

    def abort(self, rid) -> None:
        # TODO(day 52): the client went away (or the request is done): forget its queue and, if it
        # was still unfinished, tell the engine thread to abort it so its KV blocks go back.
        raise NotImplementedError("Day 52: AsyncLLM.abort")

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
        # TODO(day 52): the engine loop, forever: take every message waiting in self.inbox (block
        # for one only while the scheduler has no work): "add" -> self.sched.add, "abort" ->
        # self.sched.abort (count the ones it finds in self.num_aborted), None -> return. Then, with
        # work, ONE self.sched.step() for every request at once, and route each StepOutput to its
        # request (self._send(id, (token_id, finish_reason))); a finished one gets None after its
        # last token and leaves self.outs. A step that raises: abort and tell every request, go on.
        raise NotImplementedError("Day 52: AsyncLLM._loop")


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
    # TODO(day 52): read each field with field(body, name, types, default) and refuse with an
    # APIError 400 naming it (param=name): n other than 1, a 'stop', a prompt that leaves no room
    # in the context, max_tokens (or max_completion_tokens) < 1 or prompt + max_tokens > max_len,
    # temperature outside [0, 2], top_p outside (0, 1]. top_k, seed, ignore_eos are extensions.
    raise NotImplementedError("Day 52: sampling")


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
        # TODO(day 52): await the request's queue until None: each item is (token_id, finish_reason),
        # pushed through ONE detokenizer for this request (llm.tokenizer.detokenizer()); an
        # exception from the engine is raised. Count the tokens for usage. Whatever happens, abort
        # the request in a finally (a no-op once it finished; if the handler is cancelled, the
        # blocks go back). Fill text (the pieces), tokens and reason (the last finish_reason).
        text, tokens, reason = [], 0, None
        raise NotImplementedError("Day 52: make_app.respond (the non-streaming answer)")
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

        # TODO(day 52): as respond, but yield chunk(piece, finish_reason) per token (chat: first a
        # chunk with the role), then, if usage_in_stream, one chunk with 'choices': [] and usage,
        # then "data: [DONE]\n\n". An exception from the engine: one data: error object, then stop.
        # A client that disconnects cancels this generator at its await: abort in a finally.
        raise NotImplementedError("Day 52: make_app.sse (the SSE stream)")
        yield  # (a generator)

    return app


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def serve(llm, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          model_name: str = "tinyinfer", max_pending: int | None = None) -> None:
    """Run the server until Ctrl-C (uvicorn, one process, one event loop, one engine thread)."""
    # TODO(day 52): uvicorn.run the app make_app(...) builds, on host:port.
    raise NotImplementedError("Day 52: serve")
