"""A stand-in for the Hugging Face Hub's file endpoints on 127.0.0.1, enough for huggingface_hub to download:
HEAD and GET /{org}/{name}/resolve/{revision}/{path} with X-Repo-Commit, ETag (the file's sha256, as the Hub
gives for LFS files) and Content-Length; 404s carry X-Error-Code (RepoNotFound, RevisionNotFound,
EntryNotFound) as the Hub's do. Revisions are branch names or their commit hashes. `corrupt[(repo, path)]`
serves a file "flipped" (same size, other bytes) or "truncated" (fewer bytes than announced). Every GET is
logged in `served`."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class Hub:
    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> revision -> path -> bytes
        self.corrupt: dict[tuple[str, str], str] = {}
        self.served: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, directory: Path, revision: str = "main") -> None:
        files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*"))
                 if p.is_file()}
        self.repos.setdefault(repo, {})[revision] = files

    @staticmethod
    def commit(repo: str, revision: str) -> str:
        return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()

    def start(self) -> "Hub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _lookup(self, path: str):
        parts = unquote(path.split("?")[0]).strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {"X-Error-Code": "RepoNotFound"}, None
        repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo not in self.repos:
            return 404, {"X-Error-Code": "RepoNotFound"}, None
        revisions = self.repos[repo]
        branch = next((b for b in revisions if b == revision or self.commit(repo, b) == revision), None)
        if branch is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, None
        headers = {"X-Repo-Commit": self.commit(repo, branch)}
        if name not in revisions[branch]:
            return 404, {**headers, "X-Error-Code": "EntryNotFound"}, None
        data = revisions[branch][name]
        headers.update({"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Content-Length": str(len(data))})
        return 200, headers, (repo, name, data)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body: bool):
                status, headers, found = hub._lookup(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if found is None:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                if not body or found is None:
                    return
                repo, name, data = found
                hub.served.append((repo, name))
                mode = hub.corrupt.get((repo, name))
                if mode == "flipped":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                elif mode == "truncated":
                    data = data[: len(data) // 2]
                self.wfile.write(data)

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        return Handler
