"""clip-retrieval's back-end protocol over a dualtower index, so its `ClipClient` and its web front end can query
it (the routes of clip-retrieval's `clip_back`; our own /search stays as it is):

    POST /knn-service    {"text" | "image" (base64) | "embedding_input", "modality": "image", "num_images": N,
                          "indice_name", "deduplicate", ...} -> [{"id", "similarity", "url", "caption",
                          "image_path"}, ...] best first
    POST /metadata       {"ids": [...], "indice_name"} -> [{"id", "metadata": {"url", "caption", "image_path"}}]
    GET  /indices-list   [the index's name]

The index is an image index: modality "text" (clip-retrieval's caption index) is refused, as is `image_url` (the
service fetches nothing from the network). `deduplicate` drops a hit whose vector is within cosine 0.94 of a
better one (clip-retrieval's threshold); the safety, violence and aesthetic options name models this service does
not have and change nothing. `url` is the service's own /image/{id}.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..images import ImageDecodeError, TooManyPixels, open_image
from . import schema

KNOWN = {"text", "image", "image_url", "embedding_input", "modality", "num_images", "num_result_ids", "indice_name",
         "use_mclip", "deduplicate", "use_safety_model", "use_violence_detector", "aesthetic_score",
         "aesthetic_weight"}
DUPLICATE = 0.94  # clip-retrieval's cosine threshold for near-duplicate results


def index_name(service) -> str:
    return service.index.store.path.name


def _body(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8") if raw else "null")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise schema.Invalid(422, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise schema.Invalid(422, "expected a JSON object")
    return data


def _check_name(service, data: dict) -> None:
    name = data.get("indice_name")
    if name is not None and name != index_name(service):
        raise schema.Invalid(404, f"indice_name {str(name)[:60]!r}: this service has one index, "
                                  f"{index_name(service)!r} (GET /indices-list)")


def _result(service, request: Request, item, folders) -> dict:
    """What clip-retrieval's metadata holds of an item (a hit or a stored item: id, caption, path)."""
    return {"url": f"{str(request.base_url).rstrip('/')}/image/{item.id}", "caption": item.caption,
            "image_path": service.shown_path(item.path, folders)}


async def knn_service(request: Request):
    service = request.app.state.service
    data = _body(await request.body())
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise schema.Invalid(422, f"unknown fields {unknown[:5]}")
    _check_name(service, data)
    if data.get("modality", "image") != "image":
        raise schema.Invalid(422, "modality: this index holds images only ('image'), no caption index ('text')")
    if data.get("image_url"):
        raise schema.Invalid(422, "image_url: this service fetches nothing from the network; send the image itself "
                                  "(base64 in 'image')")
    k = schema.check_k(data.get("num_images", 40), service.limits.max_k)
    given = [f for f in ("text", "image", "embedding_input") if data.get(f)]
    if len(given) != 1:
        raise schema.Invalid(422, "give one of text, image (base64) or embedding_input")
    index = service.index
    if given[0] == "text":
        vector = await run_in_threadpool(index.embed_text, schema.check_text(data["text"], service.limits.max_text))
    elif given[0] == "embedding_input":
        vector = np.asarray(schema.check_embedding(data["embedding_input"], index.store.dim), dtype=np.float32)
    else:
        try:
            raw = base64.b64decode(data["image"], validate=True) if isinstance(data["image"], str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise schema.Invalid(422, "image must be the image file's bytes in base64")
        try:
            image = await run_in_threadpool(open_image, raw, name="image", max_pixels=service.limits.max_pixels)
        except TooManyPixels as e:
            raise schema.Invalid(413, str(e)) from None
        except ImageDecodeError as e:
            raise schema.Invalid(400, str(e)) from None
        vector = await run_in_threadpool(index.embed_image, image)
    deduplicate = bool(data.get("deduplicate", False))
    hits = await run_in_threadpool(index.search_vector, vector, 4 * k if deduplicate else k)
    if deduplicate:
        hits = _distinct(index, hits)[:k]
    folders = index.store.folders
    return [{"id": h.id, "similarity": h.score, **_result(service, request, h, folders)} for h in hits]


def _distinct(index, hits) -> list:
    """The hits less any within DUPLICATE cosine of a better one kept."""
    kept, vectors = [], []
    for hit in hits:
        v = index.item_vector(hit.id)
        v = v / np.linalg.norm(v)
        if all(float(v @ u) < DUPLICATE for u in vectors):
            kept.append(hit)
            vectors.append(v)
    return kept


async def metadata(request: Request):
    service = request.app.state.service
    data = _body(await request.body())
    _check_name(service, data)
    ids = data.get("ids")
    if not isinstance(ids, list) or len(ids) > service.limits.max_k:
        raise schema.Invalid(422, f"ids must be a list of at most {service.limits.max_k} item ids")
    ids = [schema.check_id(i, "ids[]") for i in ids]
    store = service.index.store
    items, folders = store.items(ids), store.folders
    out = []
    for i in ids:
        item = items.get(i)
        out.append({"id": i, "metadata": {} if item is None else _result(service, request, item, folders)})
    return out


async def indices_list(request: Request):
    return [index_name(request.app.state.service)]


ROUTES = (("POST", "/knn-service", knn_service), ("POST", "/metadata", metadata),
          ("GET", "/indices-list", indices_list))
