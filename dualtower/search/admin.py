"""The routes of a service that has keys (access.py): the page's login, and an index update an admin key starts.

    POST /login          {"key": KEY}: a valid key is set as the page's cookie (HttpOnly, SameSite=Strict)
    POST /admin/update   runs `dualtower index` again on the data the index was built from, in the background,
                         with the service's own model (202; 409 while one runs); the service follows it
    GET  /admin/update   {"running": bool, "last": the last run's summary or error, "started": time}
"""

from __future__ import annotations

import json
import logging
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .access import COOKIE, MAX_KEY

log = logging.getLogger("dualtower.search")


class Updater:
    """One index update at a time, in a thread, by `build_index` on the index's recorded data."""

    def __init__(self, index):
        self.index = index
        self.thread: threading.Thread | None = None
        self.state = {"running": False, "last": None, "started": None}

    def start(self) -> bool:
        if self.thread is not None and self.thread.is_alive():
            return False
        self.state.update(running=True, started=time.time())
        self.thread = threading.Thread(target=self._run, name="dualtower-index-update", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        from .build import build_index

        store = self.index.store
        try:
            source = json.loads(store.get("source") or "null")
            if not source:
                raise ValueError("the index does not record the data it was built from; run `dualtower index` "
                                 "again once to record it")
            report = build_index(source["spec"], self.index.embedder, store.path, workers=0,
                                 model_source=store.model.get("source"), image_key=source["image_key"],
                                 caption_key=source["caption_key"])
            self.state["last"] = report.summary()
            log.info("index update: %s", report.summary())
        except Exception as e:  # reported on GET /admin/update, and logged
            self.state["last"] = f"error: {e}"
            log.error("index update failed: %s", e)
        finally:
            self.state["running"] = False


async def login(request: Request):
    guard = request.app.state.service.access
    try:
        data = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError):
        data = None
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, str) or len(key) > MAX_KEY or guard.identify(key) is None:
        return JSONResponse({"error": "not a key of this service"}, status_code=401)
    response = Response(status_code=204)
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/")
    return response


async def start_update(request: Request):
    updater = request.app.state.service.updater
    if not updater.start():
        return JSONResponse({"error": "an update is running; GET /admin/update says how it went"}, status_code=409)
    return JSONResponse({"status": "started"}, status_code=202)


async def update_status(request: Request):
    return dict(request.app.state.service.updater.state)


ROUTES = (("POST", "/login", login), ("POST", "/admin/update", start_update), ("GET", "/admin/update", update_status))
