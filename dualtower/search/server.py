"""The search service: FastAPI on uvicorn, one index, one model.

    POST /search        {"text": ..., "k": 10} | {"embedding": [...]} | {"id": N} | {"positive": [...],
                        "negative": [...]} as JSON, or a multipart form with "image" files (and texts) and "k";
                        offset, min_score, generation, where (schema.py); each result's path is relative to its
                        indexed folder
    GET  /image/{id}    the original file of an item (by id only: no path ever comes from a request; served only
                        while it is an image file whose real path is inside the folders the index was built from)
    GET  /thumb/{id}    its thumbnail, stored in the index
    GET  /healthz       {"status": "ok", "items": N}
    GET  /metrics       Prometheus text: requests by endpoint and status, latency histogram, index size
    GET  /duplicates    the duplicate groups (dedupe.py), each with its reason and pair scores
    GET  /              the web page
    POST /knn-service, POST /metadata, GET /indices-list   clip-retrieval's protocol (clip_retrieval.py)
    POST /login, POST|GET /admin/update                     with API keys (access.py, admin.py)

Every limit answers with a status and a JSON {"error": ...}: a body over `max_body` bytes 413, k out of range,
an over-long text or a malformed request 422, an upload that is not an image 400, one with too many pixels 413,
an unknown id 404, and more requests waiting for the model than `max_waiting` 503 at once (so overload costs
neither memory nor time). The model runs one query at a time in a worker thread.

A request becomes one `Query` (`read_query`, checked against `schema` before any work); the routes are the
module's functions, each finding the `Service` (the index, the limits, the metrics, the text batcher) on the
app's state.
"""

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from importlib import resources

from ..errors import DualtowerError, require

for _module in ("fastapi", "python_multipart", "prometheus_client"):
    require(_module, "the search service", "search")

from fastapi import FastAPI, Request  # noqa: E402 (after the check that names the extra to install)
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from ..images import ImageDecodeError, TooManyPixels, open_image  # noqa: E402
from . import schema  # noqa: E402
from .access import Access, Guard, send_error  # noqa: E402
from .batcher import TextBatcher  # noqa: E402
from . import views  # noqa: E402
from .originals import open_original  # noqa: E402
from .query import Hit, SearchIndex  # noqa: E402

log = logging.getLogger("dualtower.search")


@dataclass(frozen=True)
class Limits:
    max_body: int = 10 * 1024 * 1024  # bytes of a request body
    max_k: int = 1000
    max_offset: int = 10_000  # how deep pages go (offset + k hits are ranked for a page)
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
            return await send_error(send, 413, f"request body over {self.limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await send_error(send, 413, f"request body over {self.limit} bytes")
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


def page() -> str:
    return resources.files("dualtower.search").joinpath("static/index.html").read_text(encoding="utf-8")


class Problem(DualtowerError):
    """A refusal of the request: its status and the message the JSON answer carries."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


@dataclass(frozen=True)
class Query:
    """One search request, checked: what to search by (kind "text", "image", "id" or "embedding"), how many
    results, and how the answer describes it."""

    kind: str
    value: object  # the text, the decoded PIL image, the item id, or the list of floats
    k: int
    described: dict
    page: schema.Page = schema.Page()


class Service:
    """What the routes share: the index, the limits, the Prometheus metrics, the requests in flight, the upload
    decoders and the text batcher."""

    def __init__(self, index: SearchIndex, limits: Limits):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.index, self.limits = index, limits
        self.registry = CollectorRegistry()
        self.requests = Counter("dualtower_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("dualtower_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 registry=self.registry, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        items = Gauge("dualtower_index_items", "images in the index", registry=self.registry)
        items.set_function(lambda: len(index))
        self.waiting = 0
        self.decoding = asyncio.Semaphore(limits.decoders)
        self.texts = TextBatcher(index)
        self.duplicates: tuple = (None, [])  # (generation and thresholds, the groups found for them)

    async def run(self, query: Query) -> list[Hit]:
        """The query's hits: texts batched with the others waiting, the rest in a worker thread."""
        index = self.index
        if query.kind == "text":
            return await asyncio.wrap_future(self.texts.submit(query.value, query.k, query.page))
        page = {"offset": query.page.offset, "min_score": query.page.min_score, "where": query.page.where}
        if query.kind == "examples":
            positive, negative = query.value
            return await run_in_threadpool(lambda: index.search_examples(positive, negative, query.k, **page))
        search = {"image": index.search_image, "id": index.search_item, "embedding": index.search_vector}[query.kind]
        return await run_in_threadpool(search, query.value, query.k, **page)

    def shown_path(self, path: str | None, folders: list[str]) -> str | None:
        """An item's file as the service shows it: relative to the indexed folder (of `folders`, the store's) that
        holds it, so answers do not reveal the server's layout (`/image/{id}` serves the file itself)."""
        if path is None:
            return None
        real = os.path.realpath(path)
        for folder in folders:
            if real.startswith(folder.rstrip(os.sep) + os.sep):
                return os.path.relpath(real, folder)
        return os.path.basename(path)


def _service(request: Request) -> Service:
    return request.app.state.service


async def read_query(request: Request) -> Query:
    """The request as a Query, from a JSON body or a multipart form, checked against `schema` before any work."""
    service = _service(request)
    limits, index = service.limits, service.index
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as e:  # python-multipart's refusals of a malformed body
            raise Problem(422, f"the body is not a multipart form: {type(e).__name__}") from None
        given, k, page = schema.check_form(form, limits.max_k, limits.max_offset, limits.max_text)
        images = {name: [await _decode(service, upload) for upload in given[name]]
                  for name in ("image", "negative_image")}
        if len(images["image"]) == 1 and sum(map(len, given.values())) == 1:
            image, name = images["image"][0]
            return Query("image", image, k, {"image": name}, page)
        positive = [{"image": im} for im, _ in images["image"]] + [{"text": t} for t in given["text"]]
        negative = [{"image": im} for im, _ in images["negative_image"]] + [{"text": t} for t in given["negative_text"]]
        described = {"positive": [n for _, n in images["image"]] + given["text"],
                     "negative": [n for _, n in images["negative_image"]] + given["negative_text"]}
        return Query("examples", (positive, negative), k, described, page)
    q = schema.parse_json(await request.body(), limits.max_k, limits.max_text, index.store.dim, limits.max_offset)
    if q.kind == "id" and index.store.item(q.value) is None:
        raise Problem(404, f"no item {q.value}")
    if q.kind == "examples":
        for example in q.value[0] + q.value[1]:
            if "id" in example and index.store.item(example["id"]) is None:
                raise Problem(404, f"no item {example['id']}")
        described = {side: [e.get("text", e.get("id", "embedding")) for e in examples]
                     for side, examples in zip(("positive", "negative"), q.value)}
    else:
        described = {"embedding": len(q.value)} if q.kind == "embedding" else {q.kind: q.value}
    return Query(q.kind, q.value, q.k, described, q.page)


async def _decode(service: "Service", upload) -> tuple:
    """(the decoded image, its file name) of an uploaded file, within the service's limits."""
    data = await upload.read()
    name = schema.check_text(upload.filename or "upload", 1000, "the file name")
    try:
        async with service.decoding:
            image = await run_in_threadpool(open_image, data, name=name, max_pixels=service.limits.max_pixels)
    except TooManyPixels as e:
        raise Problem(413, str(e)) from None
    except ImageDecodeError as e:
        raise Problem(400, str(e)) from None
    return image, name


async def search(request: Request):
    service = _service(request)
    if service.waiting >= service.limits.max_waiting:
        return JSONResponse({"error": "busy: too many searches waiting; try again shortly"}, status_code=503,
                            headers={"Retry-After": "1"})
    service.waiting += 1
    try:
        query = await read_query(request)
        started = time.perf_counter()
        generation = service.index.current()[2]
        if query.page.generation is not None and query.page.generation != generation:
            raise Problem(409, f"generation {query.page.generation}: the index has changed since (now generation "
                               f"{generation}); ask for the first page again")
        try:
            hits = await service.run(query)
        except ValueError as e:
            raise Problem(422, str(e)) from None
        took = (time.perf_counter() - started) * 1000
    finally:
        service.waiting -= 1
    folders = service.index.store.folders  # one read for the whole answer
    page = query.page
    full = len(hits) == query.k and page.offset + query.k < min(len(service.index), service.limits.max_offset + 1)
    return {"query": query.described, "k": query.k, "offset": page.offset, "min_score": page.min_score,
            "where": [str(c) for c in page.where],
            "generation": generation, "next_offset": page.offset + query.k if full else None,
            "took_ms": round(took, 2),
            "results": [{**h.to_dict(), "path": service.shown_path(h.path, folders), "thumb": f"/thumb/{h.id}",
                         "image": f"/image/{h.id}"} for h in hits]}


async def thumb(request: Request, item_id: int):
    data = _service(request).index.store.thumb(schema.check_id(item_id))
    if data is None:
        raise Problem(404, f"no item {item_id}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def image(request: Request, item_id: int):
    store = _service(request).index.store
    try:
        f, media = await run_in_threadpool(open_original, store, schema.check_id(item_id))
    except LookupError as e:
        raise Problem(404, str(e)) from None

    def chunks():
        with f:
            yield from iter(lambda: f.read(1 << 16), b"")

    return StreamingResponse(chunks(), media_type=media, headers={"X-Content-Type-Options": "nosniff"})


async def healthz(request: Request):
    index = _service(request).index
    return {"status": "ok", "items": len(index), "model": index.store.model.get("name")}


async def metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(_service(request).registry), media_type=CONTENT_TYPE_LATEST)


async def home():
    return HTMLResponse(page())


async def favicon():
    """No icon (the page declares none); an answer without a body, not a 404 in every browser's log."""
    return Response(status_code=204)


# ----------------------------------------------------------------------------------------- refusals, metrics

async def _problem(request, e: Problem):
    return JSONResponse({"error": e.message}, status_code=e.status)


async def _invalid_field(request, e: schema.Invalid):
    return JSONResponse({"error": e.message}, status_code=e.status)


async def _unexpected(request, e: Exception):
    """A fault of ours, not the request's: logged with an id the answer names, never a bare page."""
    request_id = uuid.uuid4().hex[:12]
    log.error("request %s %s %s failed", request_id, request.method, request.url.path, exc_info=e)
    return JSONResponse({"error": f"internal error (request {request_id}); the server logged it",
                         "request_id": request_id}, status_code=500, headers={"X-Request-ID": request_id})


async def _invalid(request, e: RequestValidationError):
    details = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', []))}: {err.get('msg')}" for err in e.errors())
    return JSONResponse({"error": f"invalid request: {details}"}, status_code=422)


async def _http(request, e: HTTPException):
    return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)


async def _measure(request: Request, call_next):
    service = _service(request)
    started = time.perf_counter()
    route = request.url.path
    endpoint = next((p for p in ("/search", "/image", "/thumb", "/healthz", "/metrics")
                     if route == p or route.startswith(p + "/")), "/" if route == "/" else "other")
    try:
        response = await call_next(request)
    except Exception:
        service.requests.labels(endpoint, "500").inc()
        raise
    service.latency.labels(endpoint).observe(time.perf_counter() - started)
    service.requests.labels(endpoint, str(response.status_code)).inc()
    return response


ROUTES = (("POST", "/search", search), ("GET", "/thumb/{item_id}", thumb), ("GET", "/image/{item_id}", image),
          ("GET", "/duplicates", views.duplicates),
          ("GET", "/healthz", healthz), ("GET", "/metrics", metrics), ("GET", "/", home),
          ("GET", "/favicon.ico", favicon))
HANDLERS = ((Problem, _problem), (schema.Invalid, _invalid_field), (Exception, _unexpected),
            (RequestValidationError, _invalid), (HTTPException, _http))


def create_app(index: SearchIndex, limits: Limits = Limits(), access: Access | None = None,
               cors: tuple[str, ...] = ()):
    """The service's ASGI app. `access`: API keys (access.py), required on every route but the page, /login and
    /healthz; adds /login and the admin routes (admin.py). `cors`: origins allowed to call it from their pages
    (none by default: a page elsewhere cannot read its answers)."""
    # A service searches a few queries at a time. FAISS's OpenMP threads spin between such small calls and starve
    # the model's threads: at 20 queries/s on 2 cores, p99 fell from 150 ms to 37 ms with one FAISS thread.
    require("faiss", "search", "search").omp_set_num_threads(1)
    app = FastAPI(title="dualtower search", docs_url=None, redoc_url=None, openapi_url=None)
    service = app.state.service = Service(index, limits)
    from . import clip_retrieval

    routes = ROUTES + clip_retrieval.ROUTES
    if access is not None:
        from . import admin

        service.access, service.updater = access, admin.Updater(index)
        routes += admin.ROUTES
    for method, path, endpoint in routes:
        app.add_api_route(path, endpoint, methods=[method])
    for error, handler in HANDLERS:
        app.add_exception_handler(error, handler)
    app.middleware("http")(_measure)
    if cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    guarded = app if access is None else Guard(app, access)
    return _BodyLimit(guarded, limits.max_body)


def serve(index: SearchIndex, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          access: Access | None = None, cors: tuple[str, ...] = ()) -> None:
    uvicorn = require("uvicorn", "the search service", "search")

    uvicorn.run(create_app(index, limits, access, cors), host=host, port=port, log_level="info")
