"""A fake Hugging Face hub on 127.0.0.1, serving the replica repos (tests/replica_hub.py) through the
routes huggingface_hub 2.x requests, with every request recorded and faults injected on demand.

Routes (what `snapshot_download`, `hf_hub_download` and `HfApi.model_info` send):

    GET  /api/models/{repo_id}/revision/{revision}       model_info: id, sha, siblings, ...
    GET  /api/models/{repo_id}/tree/{revision}[/{path}]  list_repo_tree (?recursive=...): files, lfs
    HEAD /{repo_id}/resolve/{revision}/{path}            file metadata: X-Repo-Commit, ETag, X-Linked-*
    GET  /{repo_id}/resolve/{revision}/{path}            the bytes, honouring `Range: bytes=N-` (206)

`revision` is the pinned commit or `main` (an alias of it). No Xet headers and no xetHash in the tree,
so the client takes its plain HTTP path. Errors carry the hub's `X-Error-Code` / `X-Error-Message`,
from which huggingface_hub picks its error class (GatedRepoError, RevisionNotFoundError, ...).

Faults: `hub.fail(429, match=r"/resolve/", times=2)` answers the next two matching requests 429
(`Retry-After: 0`; 401/403 as a gated repo, 404 as a missing revision or file, as the hub does);
`times=None` is forever. `hub.drop(match=..., after=16)` sends a 200 with the full Content-Length, then
closes the socket after `after` bytes of body (the client cannot make progress that way: it keeps only
whole 10 MiB chunks, so a drop forever ends its retries). Rules are tried in order; a spent rule is
skipped. Every request is logged as (method, path) in `hub.requests`, with its status in `hub.log`
(0: dropped). Nothing loops on the server side; the client's retries are all bounded.

    server = FakeHub(repos_for(["deci-v2", "sd15"])).start()   # then HF_ENDPOINT=server.url
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import replica_hub
from decidiff_lab.presets import HUB_PRESETS

_FILES: dict[str, dict[str, bytes]] = {}  # preset name -> replica files: built once per process
_FILES_LOCK = threading.Lock()
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt")


def replica_files(name: str) -> dict[str, bytes]:
    """Every file of preset `name`'s replica repo, by path (built on first use, then cached)."""
    with _FILES_LOCK:
        if name not in _FILES:
            from diffusers.utils import logging as diffusers_logging

            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # "modules to keep in float32: []", per model
            try:
                _FILES[name] = replica_hub.repo_files(HUB_PRESETS[name])
            finally:
                diffusers_logging.set_verbosity(level)
        return _FILES[name]


@dataclass
class Repo:
    repo_id: str
    sha: str
    files: dict[str, bytes]


def repos_for(names) -> dict[str, Repo]:
    repos = {}
    for name in names:
        preset = HUB_PRESETS[name]
        repos[preset.repo_id] = Repo(preset.repo_id, preset.revision, replica_files(name))
    return repos


@dataclass
class Rule:
    pattern: re.Pattern
    method: str | None
    times: int | None  # None: forever
    status: int = 0  # 0: drop the connection instead
    headers: dict | None = None
    after: int = 0  # bytes of body sent before a drop

    def matches(self, method: str, path: str) -> bool:
        return (self.times is None or self.times > 0) and (self.method in (None, method)) \
            and self.pattern.search(path) is not None


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _default_error_headers(status: int, path: str, repo_id: str | None) -> dict:
    repo = repo_id or "this repo"
    if status == 429:
        return {"Retry-After": "0", "X-Error-Message": "You have exceeded our hourly quotas for action: resolve."}
    if status == 401:
        return {"X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {repo} is restricted. You must "
                "have access to it and be authenticated to access it. Please log in."}
    if status == 403:
        return {"X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {repo} is restricted and you "
                "are not in the authorized list."}
    if status == 404:
        code = "EntryNotFound" if "/resolve/" in path else "RevisionNotFound"
        return {"X-Error-Code": code, "X-Error-Message": f"{code}: {path}"}
    return {}


class FakeHub:
    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, int]] = []  # (method, path, status); status 0: dropped
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- the test-facing API -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(m, p) for m, p, _ in self.log]

    def count(self, pattern: str = "", method: str | None = None) -> int:
        rx = re.compile(pattern)
        return sum(1 for m, p in self.requests if method in (None, m) and rx.search(p))

    def fail(self, status: int, match: str = "", times: int | None = 1, method: str | None = None,
             headers: dict | None = None) -> Rule:
        rule = Rule(re.compile(match), method, times, status, headers)
        with self._lock:
            self.rules.append(rule)
        return rule

    def drop(self, match: str = "", times: int | None = 1, after: int = 16, method: str | None = "GET") -> Rule:
        rule = Rule(re.compile(match), method, times, 0, None, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    # --- used by the handler -------------------------------------------------------------------------
    def _take_rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))


API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length
    timeout = 10  # a client that stops reading cannot hold a server thread for long

    def log_message(self, format, *args):  # quiet: the test reads `fake.log` instead
        pass

    def do_HEAD(self):
        self._serve("HEAD")

    def do_GET(self):
        self._serve("GET")

    # -------------------------------------------------------------------------------------------------
    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        api, resolve = API.match(path), RESOLVE.match(path)
        repo_id = (api or resolve).group("repo") if (api or resolve) else None
        rule = self.fake._take_rule(method, path)
        if rule is not None and rule.status:
            self.fake._record(method, path, rule.status)
            headers = {**_default_error_headers(rule.status, path, repo_id), **(rule.headers or {})}
            return self._error(rule.status, headers.get("X-Error-Message", "injected fault"), headers, method)
        repo = self.fake.repos.get(repo_id) if repo_id else None
        if repo is None:
            self.fake._record(method, path, 401 if repo_id else 404)
            if repo_id:  # what the hub answers an anonymous client for a repo that does not exist
                return self._error(401, "Repository not found", {"X-Error-Code": "RepoNotFound"}, method)
            return self._error(404, "Not found", {}, method)
        rev = (api or resolve).group("rev")
        if rev not in (repo.sha, "main"):
            self.fake._record(method, path, 404)
            return self._error(404, f"Invalid rev id: {rev}", {"X-Error-Code": "RevisionNotFound"}, method)
        if api and api.group("kind") == "revision":
            body = json.dumps(self._model_info(repo)).encode()
            return self._send(method, path, 200, body, {"Content-Type": "application/json"}, rule)
        if api:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            body = json.dumps(self._tree(repo, api.group("sub") or "", recursive)).encode()
            return self._send(method, path, 200, body, {"Content-Type": "application/json"}, rule)
        name = resolve.group("file")
        if name not in repo.files:
            self.fake._record(method, path, 404)
            return self._error(404, f"Entry not found: {name}", {"X-Error-Code": "EntryNotFound",
                                                                 "X-Repo-Commit": repo.sha}, method)
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "ETag": f'"{_git_oid(data)}"'}
        if name.endswith(LFS_SUFFIXES):
            headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))})
        status, start = 200, 0
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "").strip())
        if ranged and method == "GET":
            start = int(ranged.group(1))
            if start >= len(data):
                self.fake._record(method, path, 416)
                return self._error(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"}, method)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return self._send(method, path, status, data[start:], headers, rule)

    @staticmethod
    def _model_info(repo: Repo) -> dict:
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": repo.sha, "lastModified": "2024-01-01T00:00:00.000Z",
                "private": False, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "library_name": "diffusers", "tags": ["diffusers", "text-to-image"], "pipeline_tag": "text-to-image",
                "siblings": [{"rfilename": name} for name in sorted(repo.files)]}

    @staticmethod
    def _tree(repo: Repo, sub: str, recursive: bool) -> list[dict]:
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        entries, folders = [], set()
        for name in sorted(repo.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if not recursive and len(parts) > 1:
                continue
            data = repo.files[name]
            entry = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        dirs = [{"type": "directory", "oid": _git_oid(folder.encode()), "size": 0, "path": folder}
                for folder in sorted(folders)]
        return dirs + entries

    def _error(self, status: int, message: str, headers: dict, method: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _send(self, method: str, path: str, status: int, body: bytes, headers: dict, rule: Rule | None) -> None:
        dropping = rule is not None and not rule.status and method == "GET"
        self.fake._record(method, path, 0 if dropping else status)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "HEAD":
            return
        if not dropping:
            self.wfile.write(body)
            return
        # The fault: a full Content-Length promised, a few bytes sent, then the socket closed under the client.
        self.wfile.write(body[:rule.after])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --- pytest fixtures (import them into a test module: `from fake_hub import fake_hub, hub_server`) -------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def hub_server():
    """The fake hub serving the replica of REAL_PAIR (deci-v2, sd15), for the whole session."""
    server = FakeHub(repos_for(("deci-v2", "sd15"))).start()
    yield server
    server.stop()


@pytest.fixture
def fake_hub(hub_server, monkeypatch, tmp_path):
    """The fake hub as this test's HF_ENDPOINT, online, into an empty HF_HOME, with no rules and an
    empty log, `auto` undecided, and huggingface_hub's own retry waits recorded instead of slept.

    huggingface_hub reads HF_HUB_OFFLINE once, at import (`constants.HF_HUB_OFFLINE`); the suite runs
    under HF_HUB_OFFLINE=1, so unsetting the variable is not enough: the constant is switched off too.
    """
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    from decidiff_lab import loading

    hub_server.reset()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy set on the machine must not see the fake hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _http.close_session()  # the client reads the proxy settings when it is created
    waits: list[float] = []
    clock = type("Clock", (), {"sleep": staticmethod(waits.append)})  # the only `time.` those modules use
    monkeypatch.setattr(_http, "time", clock)
    monkeypatch.setattr(file_download, "time", clock)
    monkeypatch.setattr(loading, "_AUTO", {})
    hub_server.client_waits = waits
    yield hub_server
    hub_server.reset()
