"""Views of an index beyond a ranking: the duplicate groups (dedupe.py) as the service answers them."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from . import dedupe, schema


async def duplicates(request: Request):
    """The index's duplicate groups (dedupe.py), computed once per generation and thresholds."""
    service = request.app.state.service
    params = request.query_params
    unknown = sorted(set(params) - {"min_cosine", "max_distance"})
    if unknown:
        raise schema.Invalid(422, f"unknown parameters {unknown[:5]}; duplicates takes min_cosine and max_distance")
    min_cosine = schema.check_min_score(params.get("min_cosine", str(dedupe.MIN_COSINE)), given_as_text=True)
    max_distance = schema.check_count(params.get("max_distance", str(dedupe.MAX_DISTANCE)), "max_distance", 0, 64,
                                      given_as_text=True)
    index = service.index
    key = (index.current()[2], min_cosine, max_distance)
    if service.duplicates[0] != key:
        groups = await run_in_threadpool(dedupe.find, index, min_cosine, max_distance)
        service.duplicates = (key, groups)
    groups = service.duplicates[1]
    items, folders = index.store.items(sorted({i for g in groups for i in g.ids})), index.store.folders
    answer = []
    for group in groups:
        shown = group.to_dict(items)
        for item in shown["items"]:
            item.update(path=service.shown_path(item["path"], folders), thumb=f"/thumb/{item['id']}",
                        image=f"/image/{item['id']}")
        answer.append(shown)
    return {"generation": key[0], "min_cosine": min_cosine, "max_distance": max_distance, "groups": answer}
