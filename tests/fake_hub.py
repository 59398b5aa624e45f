"""A Hugging Face hub on 127.0.0.1 for download tests: the real `huggingface_hub` client talks to it.

It serves one repo from a local folder through the endpoints our downloader uses (repo info with
file sizes and SHA-256, `resolve` with HEAD and ranged GET). A file can be
set to stall after a number of bytes, so a test can kill the downloading process mid-file; every
request is recorded (with its Range header) so a test can see that the next run resumed.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Stall:
    """Send `after_bytes` of `path`, announce it, then hold the connection until released."""

    path: str
    after_bytes: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeHub:
    """`with FakeHub("owner/name", folder) as hub:` serves folder's files; `hub.endpoint` is the URL.

    In this process, `hub.use(monkeypatch)` points huggingface_hub at it; child processes get
    `HF_ENDPOINT=hub.endpoint` in their environment.
    """

    def __init__(self, repo_id: str, folder: Path):
        self.repo_id, self.folder = repo_id, folder
        self.files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.stall: Stall | None = None
        self.corrupt: set[str] = set()  # files served with one byte flipped
        self.gated = False  # answer like a gated repo to a user who has not accepted its licence
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.stall is not None:
            self.stall.release.set()
        self._server.shutdown()
        self._server.server_close()

    def use(self, monkeypatch) -> None:
        """Point this process's huggingface_hub at the fake hub (its URLs are fixed at import)."""
        from huggingface_hub import constants

        template = constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(constants.ENDPOINT, self.endpoint, 1)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def ranges_for(self, path: str) -> list[str | None]:
        """Range headers of the GET requests for one file, in order."""
        return [rng for method, requested, rng in self.requests if method == "GET" and requested.endswith("/" + path)]

    def _sibling(self, path: str) -> dict:
        """A file as the repo-info API lists it with `blobs=true` (weights are LFS files with a SHA-256)."""
        data = self.files[path].read_bytes()
        entry = {"rfilename": path, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
        if path.endswith((".safetensors", ".gguf")):
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _json(self, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _not_found(self, code: str = "EntryNotFound") -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _refuse_gated(self) -> None:
                body = b'{"error": "Access to model is restricted. You must have access to it."}'
                self.send_response(403)
                self.send_header("X-Error-Code", "GatedRepo")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                hub.requests.append((self.command, path, self.headers.get("Range")))
                api = f"/api/models/{hub.repo_id}"
                if hub.gated:
                    return self._refuse_gated()
                if path == api or path.startswith(api + "/revision/"):
                    siblings = [hub._sibling(name) for name in hub.files]
                    return self._json({"id": hub.repo_id, "modelId": hub.repo_id, "sha": COMMIT,
                                       "siblings": siblings, "private": False, "gated": False})
                if path.startswith("/api/models/"):
                    return self._not_found("RepoNotFound")  # the hub's answer for any other repo
                match = re.fullmatch(rf"/{re.escape(hub.repo_id)}/resolve/[^/]+/(.+)", path)
                if not match or match.group(1) not in hub.files:
                    return self._not_found()
                self._send_file(match.group(1), head)

            def _send_file(self, name: str, head: bool) -> None:
                data = hub.files[name].read_bytes()
                if name in hub.corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 0xFF])
                start = 0
                requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if requested and not head:
                    start = int(requested.group(1))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                stall = hub.stall
                if stall is not None and stall.path == name and start < stall.after_bytes:
                    self.wfile.write(data[start:stall.after_bytes])
                    self.wfile.flush()
                    stall.reached.set()
                    stall.release.wait(timeout=120)
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        return Handler
