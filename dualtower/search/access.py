"""Who may use the search service: API keys, each read-only or admin (admin may also start an index update),
checked in constant time and rate-limited per key. Keys are kept only as SHA-256 digests and never logged.

    keys file (JSON)  {"keys": [{"name": "alice", "role": "read", "sha256": "<hex>", "per_minute": 600}, ...]}
                      `dualtower keys add FILE NAME [--admin]` makes a key, prints it once and keeps its digest

A request carries its key as `Authorization: Bearer KEY` or `X-API-Key: KEY`, or in the HttpOnly, SameSite=Strict
cookie that `POST /login` sets for the web page (so its thumbnails load too). Without a valid key: 401; a read key
on an admin route: 403; past the key's rate: 429 with Retry-After. Open without a key: the page itself, /login
and /healthz. A service bound to anything but loopback must have keys (the command refuses to start without).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import io
from ..errors import UserError

ROLES = ("read", "admin")
COOKIE = "dualtower_key"
OPEN = ("/", "/favicon.ico", "/login", "/healthz")
ADMIN = "/admin/"
MAX_KEY = 200  # characters of a presented key


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Key:
    name: str
    role: str
    sha256: str
    per_minute: int = 600


def read_keys(path: "str | os.PathLike") -> list[Key]:
    """The keys of a keys file; a bad file or entry is refused naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such keys file; make one with `dualtower keys add {path} NAME`") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a readable keys file ({e})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f'{path}: a keys file is {{"keys": [...]}}')
    keys = []
    for i, e in enumerate(entries):
        ok = isinstance(e, dict) and isinstance(e.get("name"), str) and e.get("role") in ROLES and \
            isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64 and \
            all(c in "0123456789abcdef" for c in e["sha256"]) and \
            isinstance(e.get("per_minute", 600), int) and 1 <= e.get("per_minute", 600) <= 1_000_000
        if not ok:
            raise UserError(f"{path}: keys[{i}] needs a name, a role ({' or '.join(ROLES)}), the key's sha256 "
                            "(64 hex digits) and optionally per_minute (1 to 1000000)")
        keys.append(Key(e["name"], e["role"], e["sha256"], e.get("per_minute", 600)))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: key names must differ")
    return keys


def add_key(path: "str | os.PathLike", name: str, role: str = "read", per_minute: int = 600) -> str:
    """A new random key named `name` added to the keys file (created if missing); the key, shown only now."""
    path = Path(path)
    keys = read_keys(path) if path.exists() else []
    if role not in ROLES or not name or any(k.name == name for k in keys):
        raise UserError(f"{path}: a key named {name!r} exists already" if name else "a key needs a name")
    key = secrets.token_urlsafe(32)
    keys.append(Key(name, role, digest(key), per_minute))
    io.write_json(path, {"keys": [k.__dict__ for k in keys]})
    os.chmod(path, 0o600)
    return key


class Access:
    """The keys of a service and each key's rate (a token bucket of `per_minute`, refilled continuously)."""

    def __init__(self, keys: list[Key]):
        if not keys:
            raise UserError("the keys file holds no keys")
        self.keys = keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def identify(self, presented: str | None) -> Key | None:
        """The key `presented` is, compared with every key's digest in constant time (no early exit)."""
        if not presented or len(presented) > MAX_KEY:
            return None
        given, found = digest(presented).encode(), None
        for key in self.keys:
            if hmac.compare_digest(given, key.sha256.encode()) and found is None:
                found = key
        return found

    def spend(self, key: Key) -> float:
        """0 if `key` may make a request now (and counts it), else the seconds until it may."""
        now, rate = time.monotonic(), key.per_minute / 60
        with self._lock:
            tokens, then = self._buckets.get(key.name, (float(key.per_minute), now))
            tokens = min(float(key.per_minute), tokens + (now - then) * rate)
            if tokens < 1:
                self._buckets[key.name] = (tokens, now)
                return (1 - tokens) / rate
            self._buckets[key.name] = (tokens - 1, now)
            return 0.0


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries: Authorization: Bearer, X-API-Key, or the page's cookie."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


class Guard:
    """ASGI middleware: every request but the open ones needs a valid key, admin routes an admin key, and each
    key keeps to its rate."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN:
            return await self.app(scope, receive, send)
        key = self.access.identify(presented_key(dict(scope.get("headers") or [])))
        if key is None:
            return await send_error(send, 401, "this service needs an API key: send Authorization: Bearer KEY or "
                                            "X-API-Key: KEY (the page asks for it)", [(b"www-authenticate", b"Bearer")])
        if scope["path"].startswith(ADMIN) and key.role != "admin":
            return await send_error(send, 403, f"key {key.name!r} is read-only; this route needs an admin key")
        wait = self.access.spend(key)
        if wait > 0:
            return await send_error(send, 429, f"key {key.name!r} is over its {key.per_minute} requests a minute; "
                                            f"try again in {wait:.1f} s", [(b"retry-after", str(int(wait) + 1).encode())])
        scope.setdefault("state", {})["key"] = key.name
        return await self.app(scope, receive, send)


async def send_error(send, status: int, message: str, headers: list | None = None) -> None:
    """An ASGI answer {"error": message} with `status`, before any route runs."""
    data = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})
