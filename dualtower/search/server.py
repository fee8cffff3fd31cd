"""The search service: FastAPI on uvicorn, one index, one model.

    POST /search        {"text": ..., "k": 10} | {"embedding": [...]} | {"id": N} as JSON, or a multipart form
                        with an "image" file and "k"
    GET  /image/{id}    the original file of an item (by id only: no path ever comes from a request; served only
                        while it is an image file whose real path is inside the folders the index was built from)
    GET  /thumb/{id}    its thumbnail, stored in the index
    GET  /healthz       {"status": "ok", "items": N}
    GET  /metrics       Prometheus text: requests by endpoint and status, latency histogram, index size
    GET  /              the web page

Every limit answers with a status and a JSON {"error": ...}: a body over `max_body` bytes 413, k out of range,
an over-long text or a malformed request 422, an upload that is not an image 400, one with too many pixels 413,
an unknown id 404, and more requests waiting for the model than `max_waiting` 503 at once (so overload costs
neither memory nor time). The model runs one query at a time in a worker thread.
"""

import asyncio
import json
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources

from ..errors import require
from . import schema
from .query import SearchIndex

log = logging.getLogger("dualtower.search")


@dataclass(frozen=True)
class Limits:
    max_body: int = 10 * 1024 * 1024  # bytes of a request body
    max_k: int = 1000
    max_text: int = 1000  # characters of a text query
    max_pixels: int = 40_000_000  # of an uploaded image, read from its header before decoding
    max_waiting: int = 32  # search requests in flight (running or waiting for the model)
    decoders: int = 2  # uploads decoded at once, in worker threads (never on the event loop)


class _BodyLimit:
    """ASGI middleware: a body over the limit (declared or streamed) gets 413 before the app reads it."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _send_error(send, 413, f"request body over {self.limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_error(send, 413, f"request body over {self.limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _send_error(send, status: int, message: str) -> None:
    data = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _TextBatcher:
    """Text queries that arrive while the model is busy are embedded and searched together, in one batch (up
    to `max_batch`): under load each query waits for at most one batch ahead of it, and the batch costs little
    more than one query."""

    def __init__(self, index: SearchIndex, max_batch: int = 32):
        import queue

        self.index, self.max_batch = index, max_batch
        self.queue: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="dualtower-text-batcher", daemon=True)
        self.thread.start()

    def submit(self, text: str, k: int) -> Future:
        future: Future = Future()
        self.queue.put((text, k, future))
        return future

    def _run(self) -> None:
        import queue

        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                hits = self.index.search_texts([t for t, _, _ in batch], max(k for _, k, _ in batch))
                for (_, k, future), h in zip(batch, hits):
                    future.set_result(h[:k])
            except Exception as e:  # every waiting request hears of it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)


def page() -> str:
    return resources.files("dualtower.search").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(index: SearchIndex, limits: Limits = Limits()):
    for module in ("fastapi", "python_multipart", "prometheus_client"):
        require(module, "the search service", "search")
    # A service searches a few queries at a time. FAISS's OpenMP threads spin between such small calls and starve
    # the model's threads: at 20 queries/s on 2 cores, p99 fell from 150 ms to 37 ms with one FAISS thread.
    require("faiss", "search", "search").omp_set_num_threads(1)
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import (
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from ..images import ImageDecodeError, TooManyPixels, open_image

    app = FastAPI(title="dualtower search", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry()
    requests = Counter("dualtower_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                       registry=registry)
    latency = Histogram("dualtower_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                        registry=registry, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    items = Gauge("dualtower_index_items", "images in the index", registry=registry)
    items.set_function(lambda: len(index))
    state = {"waiting": 0}
    decoding = asyncio.Semaphore(limits.decoders)
    texts = _TextBatcher(index)

    class Problem(Exception):
        def __init__(self, status: int, message: str):
            self.status, self.message = status, message

    @app.exception_handler(Problem)
    async def _problem(request, e: Problem):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(schema.Invalid)
    async def _invalid_field(request, e: schema.Invalid):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        """A fault of ours, not the request's: logged with an id the answer names, never a bare page."""
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=e)
        return JSONResponse({"error": f"internal error (request {request_id}); the server logged it",
                             "request_id": request_id}, status_code=500, headers={"X-Request-ID": request_id})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        details = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', []))}: {err.get('msg')}" for err in e.errors())
        return JSONResponse({"error": f"invalid request: {details}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        started = time.perf_counter()
        route = request.url.path
        endpoint = next((p for p in ("/search", "/image", "/thumb", "/healthz", "/metrics")
                         if route == p or route.startswith(p + "/")), "/" if route == "/" else "other")
        try:
            response = await call_next(request)
        except Exception:
            requests.labels(endpoint, "500").inc()
            raise
        latency.labels(endpoint).observe(time.perf_counter() - started)
        requests.labels(endpoint, str(response.status_code)).inc()
        return response

    async def _query(request: Request):
        """(what to run, k, a description of the query) from a JSON body or a multipart form, checked against
        `schema` before any work."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            try:
                form = await request.form()
            except Exception as e:  # python-multipart's refusals of a malformed body
                raise Problem(422, f"the body is not a multipart form: {type(e).__name__}") from None
            upload, k = schema.check_form(form, limits.max_k)
            data = await upload.read()
            name = schema.check_text(upload.filename or "upload", 1000, "the file name")
            try:
                async with decoding:
                    image = await run_in_threadpool(open_image, data, name=name, max_pixels=limits.max_pixels)
            except TooManyPixels as e:
                raise Problem(413, str(e)) from None
            except ImageDecodeError as e:
                raise Problem(400, str(e)) from None
            return (lambda k: index.search_image(image, k)), k, {"image": name}
        q = schema.parse_json(await request.body(), limits.max_k, limits.max_text, index.store.dim)
        if q.kind == "text":
            return ("text", q.value), q.k, {"text": q.value}
        if q.kind == "id":
            if index.store.item(q.value) is None:
                raise Problem(404, f"no item {q.value}")
            return (lambda k: index.search_item(q.value, k)), q.k, {"id": q.value}
        return (lambda k: index.search_vector(q.value, k)), q.k, {"embedding": len(q.value)}

    @app.post("/search")
    async def search(request: Request):
        if state["waiting"] >= limits.max_waiting:
            return JSONResponse({"error": "busy: too many searches waiting; try again shortly"}, status_code=503,
                                headers={"Retry-After": "1"})
        state["waiting"] += 1
        try:
            run, k, query = await _query(request)
            started = time.perf_counter()
            try:
                if isinstance(run, tuple):  # a text: batched with the others waiting
                    hits = await asyncio.wrap_future(texts.submit(run[1], k))
                else:
                    hits = await run_in_threadpool(run, k)
            except ValueError as e:
                raise Problem(422, str(e)) from None
            took = (time.perf_counter() - started) * 1000
        finally:
            state["waiting"] -= 1
        return {"query": query, "k": k, "took_ms": round(took, 2),
                "results": [{**h.to_dict(), "thumb": f"/thumb/{h.id}", "image": f"/image/{h.id}"} for h in hits]}

    @app.get("/thumb/{item_id}")
    async def thumb(item_id: int):
        data = index.store.thumb(schema.check_id(item_id))
        if data is None:
            raise Problem(404, f"no item {item_id}")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/image/{item_id}")
    async def image(item_id: int):
        try:
            f, media = await run_in_threadpool(index.store.open_original, schema.check_id(item_id))
        except LookupError as e:
            raise Problem(404, str(e)) from None

        def chunks():
            with f:
                yield from iter(lambda: f.read(1 << 16), b"")

        return StreamingResponse(chunks(), media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "items": len(index), "model": index.store.model.get("name")}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def home():
        return page()

    return _BodyLimit(app, limits.max_body)


def serve(index: SearchIndex, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits()) -> None:
    uvicorn = require("uvicorn", "the search service", "search")

    uvicorn.run(create_app(index, limits), host=host, port=port, log_level="info")
