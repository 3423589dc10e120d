"""A local, in-memory Hugging Face Hub for offline tests, and the `hub_server` pytest fixture.

The real Hub cannot be reached from the test machines, yet `push_to_hub` / `from_pretrained` / `snapshot_download`
are part of what this project ships. `HubServer` answers the subset of the Hub HTTP API that `huggingface_hub`
2.4's client uses for those (endpoints read from the client source, not guessed):

| client call | endpoint |
|---|---|
| `create_repo` | `POST /api/repos/create` |
| `delete_repo` | `DELETE /api/repos/delete` |
| `whoami` | `GET /api/whoami-v2` |
| `create_commit` / `upload_folder`, README metadata check, `RepoCard.validate` | `POST /api/validate-yaml` |
| upload mode of each file | `POST /api/{type}s/{repo}/preupload/{rev}`: always `uploadMode: "regular"` |
| the commit itself | `POST /api/{type}s/{repo}/commit/{rev}`: NDJSON, regular files base64 inline |
| `create_branch` | `POST /api/{type}s/{repo}/branch/{branch}` |
| `model_info` / `repo_info` / `repo_exists` | `GET /api/{type}s/{repo}[/revision/{rev}]`: `siblings`, `sha`, ... |
| `list_repo_tree` / `list_repo_files` / `snapshot_download` | `GET /api/{type}s/{repo}/tree/{rev}[/{path}]` |
| `get_paths_info` | `POST /api/{type}s/{repo}/paths-info/{rev}` |
| `hf_hub_download` / `file_exists` / `from_pretrained` | `HEAD` and `GET /[{type}s/]{repo}/resolve/{rev}/{path}` |

Because every file is "regular" (the Hub never asks for LFS or Xet), no LFS/Xet server is needed. Each commit gets a
new sha; branches, commit shas (full or a unique prefix of 7+ characters) and `ETag`s (the git blob sha1, which is
also what the client compares to skip unchanged files) behave like the Hub's.

Pointing the client at the server. `huggingface_hub` reads `HF_ENDPOINT` (and `HF_HOME`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`, `HF_HUB_DISABLE_XET`, ...) once, at import time, into `huggingface_hub.constants`; a few values are
further baked into objects built at import or on first use. Setting the environment variable inside a test is
therefore too late. `HubServer.configure_client(monkeypatch, hf_home)` patches, for the duration of one test:

- `constants.ENDPOINT` and the value derived from it, `constants.HUGGINGFACE_CO_URL_TEMPLATE` (what `hf_hub_url`
  formats); the server host is added to `constants.HF_URL_HOSTS`;
- the module-level `huggingface_hub.hf_api.api` instance behind `huggingface_hub.upload_folder`, `create_repo`, ...
  (its `endpoint` is fixed at construction), and transformers' lazily created `transformers.utils.hub._hf_api`
  (reset to `None`, so it is rebuilt against the patched endpoint); `HfFileSystem` instances are dropped;
- `datasets.config.HF_ENDPOINT` / `HUB_DATASETS_URL` if `datasets` is already imported;
- the cache and token paths (`HF_HOME`, `HF_HUB_CACHE`, `HF_ASSETS_CACHE`, `HF_TOKEN_PATH`, ...) to a fresh folder,
  `HF_HUB_OFFLINE` to off, telemetry off, and `HF_HUB_DISABLE_XET` on (see below);
- the same settings as environment variables (`HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN` = a fake token, ...), so that a
  library imported later in the test, or a subprocess, sees them too. For a subprocess, `client_env(hf_home)` returns
  a complete environment: there `HF_ENDPOINT` is set before `huggingface_hub` is imported, which is the plain way.

With `hf_xet` installed, `upload_folder` takes a pipelined path that retries a failed commit 5 times with backoff
(about 23 s) before raising. Xet is therefore disabled by default so `upload_folder` goes through `create_commit`,
which fails at once; pass `disable_xet=False` to exercise the pipelined path (it still only needs the endpoints
above, as every file is "regular").

Failure injection: `server.fail_next("commit", status=500)` makes the next commit answer 500 (`times=` for more,
`times=None` until `clear_failures()`), so a test can make a push fail after the preupload step succeeded.
Inspection and seeding: `requests` / `operations()` (what the client called), `repo_files()`, `list_commits()`,
`add_repo()`. Not supported (answered with a clear 400/404): pull requests (`create_pr=True`), LFS pointers,
tags and refs listing, Spaces runtime, discussions.

Use in tests (after `pytest_plugins = ["hub_server"]` in `tests/conftest.py`)::

    def test_push(hub_server, tmp_path):
        HfApi().create_repo("test-user/tiny")
        HfApi().upload_folder(repo_id="test-user/tiny", folder_path=tmp_path / "model")
        hub_server.fail_next("commit", status=500)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

logger = logging.getLogger(__name__)

FAKE_TOKEN = "hf_localtesthubtoken0123456789"
DEFAULT_USER = "test-user"
DEFAULT_BRANCH = "main"

# Names accepted by `HubServer.fail_next`; "resolve" matches both HEAD and GET on a file.
OPERATIONS = frozenset(
    {
        "create_repo",
        "delete_repo",
        "whoami",
        "validate_yaml",
        "preupload",
        "commit",
        "create_branch",
        "repo_info",
        "tree",
        "paths_info",
        "resolve",
        "resolve_head",
        "resolve_get",
    }
)

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_YAML_BLOCK = re.compile(r"^\s*---[\r\n]+(.*?)[\r\n]+---([\r\n]|$)", re.DOTALL)


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file: the Hub's `oid`/`ETag` for regular files, and what the client compares to."""
    return hashlib.sha1(b"blob " + str(len(content)).encode() + b"\0" + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answer, with the headers the client maps to its exception classes (`X-Error-Code`)."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        commit: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.commit = commit
        self.extra = extra or {}


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    description: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    method: str
    path: str
    operation: str | None
    status: int


@dataclass
class _Failure:
    status: int
    remaining: int | None
    message: str


class HubServer:
    """An in-memory Hub on 127.0.0.1, served from a background thread (see the module docstring)."""

    def __init__(self, user: str = DEFAULT_USER, token: str = FAKE_TOKEN) -> None:
        self.user = user
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RecordedRequest] = []
        self._failures: dict[str, _Failure] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._monkeypatch: pytest.MonkeyPatch | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubServer:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="local-hub", daemon=True)
        self._thread.start()
        logger.debug("Local Hub listening on %s", self.endpoint)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started: call start() or use it as a context manager.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ failure injection

    def fail_next(
        self, operation: str, status: int = 500, *, times: int | None = 1, message: str | None = None
    ) -> None:
        """Make the next `times` requests of `operation` (a name in `OPERATIONS`) answer `status`; `None` = always."""
        if operation not in OPERATIONS:
            raise ValueError(f"Unknown operation {operation!r}; expected one of {sorted(OPERATIONS)}.")
        if times is not None and times < 1:
            raise ValueError(f"`times` must be a positive integer or None, got {times}.")
        message = message or f"Injected failure: local test Hub answered {status} to {operation!r}."
        with self._lock:
            self._failures[operation] = _Failure(status=status, remaining=times, message=message)

    def clear_failures(self) -> None:
        """Drop every pending injected failure (needed after `fail_next(..., times=None)`)."""
        with self._lock:
            self._failures.clear()

    def _take_failure(self, operation: str, method: str) -> _Failure | None:
        candidates = [operation]
        if operation == "resolve":
            candidates = [f"resolve_{method.lower()}", "resolve"]
        with self._lock:
            for name in candidates:
                failure = self._failures.get(name)
                if failure is None:
                    continue
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        del self._failures[name]
                return failure
        return None

    # ------------------------------------------------------------------ seeding and inspection helpers for tests

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | None = None,
        *,
        repo_type: str = "model",
        private: bool = False,
    ) -> str:
        """Create `repo_id` server-side (no client call), optionally with a commit of `files`; returns the head sha."""
        if repo_type not in _URL_PREFIXES or repo_id.count("/") != 1:
            raise ValueError(f"Expected a 'namespace/name' repo id and a repo type in {list(_URL_PREFIXES)}.")
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise ValueError(f"{repo_type} repo {repo_id} already exists.")
            repo = self._create_repo(repo_type, repo_id, private)
            if files:
                head = repo.branches[DEFAULT_BRANCH]
                commit = self._new_commit(repo, head, "Add files", "", {**repo.commits[head].files, **files})
                repo.branches[DEFAULT_BRANCH] = commit.sha
            return repo.branches[DEFAULT_BRANCH]

    def repo_files(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> dict[str, bytes]:
        """The files of `repo_id` at `revision`, as the server stores them."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return dict(repo.commits[self._resolve_revision(repo, revision)].files)

    def list_commits(self, repo_id: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            sha: str | None = self._resolve_revision(repo, revision)
            history = []
            while sha is not None:
                history.append(repo.commits[sha])
                sha = repo.commits[sha].parent
            return history

    def operations(self) -> list[str]:
        """The operation name of each request received so far, in order (`None` entries are unknown routes)."""
        with self._lock:
            return [r.operation for r in self.requests if r.operation is not None]

    # ------------------------------------------------------------------ client configuration

    def client_env(self, hf_home: str | os.PathLike, *, disable_xet: bool = True) -> dict[str, str]:
        """Environment variables pointing a (sub)process's client at this server, with its own cache and token."""
        hf_home = str(hf_home)
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": hf_home,
            "HF_HUB_CACHE": os.path.join(hf_home, "hub"),
            "HF_ASSETS_CACHE": os.path.join(hf_home, "assets"),
            "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
            "HF_TOKEN": self.token,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_XET": "1" if disable_xet else "0",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def configure_client(
        self, monkeypatch: pytest.MonkeyPatch, hf_home: str | os.PathLike, *, disable_xet: bool = True
    ) -> None:
        """Point the already-imported client libraries at this server; `monkeypatch` undoes it all after the test."""
        from huggingface_hub import constants, hf_api

        hf_home = str(hf_home)
        Path(hf_home).mkdir(parents=True, exist_ok=True)
        for name, value in self.client_env(hf_home, disable_xet=disable_xet).items():
            monkeypatch.setenv(name, value)

        endpoint = self.endpoint
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname})
        monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", disable_xet)
        monkeypatch.setattr(constants, "HF_HOME", hf_home)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", os.path.join(hf_home, "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", os.path.join(hf_home, "stored_tokens"))
        monkeypatch.setattr(constants, "HF_ASSETS_CACHE", os.path.join(hf_home, "assets"))
        monkeypatch.setattr(constants, "HUGGINGFACE_ASSETS_CACHE", os.path.join(hf_home, "assets"))
        self._monkeypatch = monkeypatch
        self.use_cache_dir(os.path.join(hf_home, "hub"))

        if (transformers_hub := sys.modules.get("transformers.utils.hub")) is not None:
            monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)
        if (datasets_config := sys.modules.get("datasets.config")) is not None:
            monkeypatch.setattr(datasets_config, "HF_ENDPOINT", endpoint, raising=False)
            monkeypatch.setattr(
                datasets_config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
            )
        if (hf_file_system := sys.modules.get("huggingface_hub.hf_file_system")) is not None:
            hf_file_system.HfFileSystem.clear_instance_cache()

    def use_cache_dir(self, cache_dir: str | os.PathLike) -> Path:
        """Switch the default Hub cache (e.g. to an empty folder, to prove a download really comes from the server)."""
        if self._monkeypatch is None:
            raise RuntimeError("use_cache_dir() needs configure_client() first.")
        from huggingface_hub import constants

        cache_dir = str(cache_dir)
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self._monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
        self._monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
        self._monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", cache_dir)
        return Path(cache_dir)

    # ------------------------------------------------------------------ storage (call with the lock held)

    def _get_repo(self, repo_type: str, repo_id: str, authorized: bool = True) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _resolve_revision(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [sha for sha in repo.commits if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _new_commit(self, repo: Repo, parent: str | None, title: str, description: str, files: dict[str, bytes]):
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{title}\0{next(self._counter)}".encode())
        for path in sorted(files):
            digest.update(f"\0{path}\0{git_blob_sha1(files[path])}".encode())
        commit = Commit(digest.hexdigest(), parent, title, description, _now(), files)
        repo.commits[commit.sha] = commit
        return commit

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
        commit = self._new_commit(repo, None, "initial commit", "", {".gitattributes": _GITATTRIBUTES})
        repo.branches[DEFAULT_BRANCH] = commit.sha
        self.repos[(repo_type, repo_id)] = repo
        return repo


def _repo_url_prefix(endpoint: str, repo_type: str, repo_id: str) -> str:
    return f"{endpoint}/{_URL_PREFIXES[repo_type]}{repo_id}"


def _card_data(files: dict[str, bytes]) -> dict[str, Any] | None:
    """The README front matter, which the Hub exposes as `cardData` (None if absent or unparsable)."""
    readme = files.get("README.md")
    if readme is None:
        return None
    match = _YAML_BLOCK.match(readme.decode("utf-8", errors="replace"))
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Files and folders under `prefix` (the repo root if empty), like the Hub's tree listing."""
    base = prefix.strip("/")
    start = f"{base}/" if base else ""
    files_below = {path: content for path, content in files.items() if path.startswith(start)}
    if base and not files_below:
        raise HubError(404, f"{base} does not exist on this revision", "EntryNotFound")
    folders: dict[str, dict[str, bytes]] = {}
    entries: list[dict[str, Any]] = []
    for path, content in files_below.items():
        parts = path[len(start) :].split("/")
        for depth in range(1, len(parts)):
            if not recursive and depth > 1:
                break
            folder = start + "/".join(parts[:depth])
            folders.setdefault(folder, {})[path] = content
        if recursive or len(parts) == 1:
            entries.append({"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": path})
    for folder, content in folders.items():
        listing = "".join(f"{p}\0{git_blob_sha1(c)}\n" for p, c in sorted(content.items()))
        entries.append(
            {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": folder}
        )
    return sorted(entries, key=lambda entry: entry["path"])


def _validate_card_yaml(content: str, repo_type: str) -> tuple[list[str], list[str]]:
    """Errors and warnings for README metadata, checked with huggingface_hub's own card-data classes."""
    from huggingface_hub import DatasetCardData, ModelCardData, SpaceCardData
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    match = _YAML_BLOCK.match(content)
    if match is None:
        return [], ["empty or missing yaml metadata in repo card"]
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"Invalid YAML: {error}"], []
    if data is None:
        return [], ["empty or missing yaml metadata in repo card"]
    if not isinstance(data, dict):
        return ["YAML metadata must be a mapping"], []
    errors = []
    card_data_class = {"model": ModelCardData, "dataset": DatasetCardData, "space": SpaceCardData}[repo_type]
    try:
        card_data_class(**data)
    except (TypeError, ValueError) as error:
        errors.append(f"Invalid card data: {error}")
    warnings = []
    for key in ("base_model", "datasets"):
        values = data.get(key)
        for value in [values] if isinstance(values, str) else values or []:
            if value == "":  # PEFT writes `base_model: ''` for models built from a config
                warnings.append(f'"{key}" is empty')
                continue
            try:
                validate_repo_id(value)
            except HFValidationError as error:
                errors.append(f'"{key}" must be Hub repo ids: {error}')
    for key in ("tags", "datasets", "metrics", "language"):
        values = data.get(key)
        if values is not None and not isinstance(values, (str, list)):
            errors.append(f'"{key}" must be a string or a list of strings')
    if data.get("license") is not None and not isinstance(data["license"], str):
        errors.append('"license" must be a string')
    return errors, warnings


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the `HubServer` bound as the `hub` class attribute."""

    protocol_version = "HTTP/1.1"
    hub: HubServer
    _operation: str | None = None

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("local hub: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _require_auth(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        # Record before answering: once the client has the answer, a test may already look at `requests`.
        with self.hub._lock:
            self.hub.requests.append(RecordedRequest(self.command, urlsplit(self.path).path, self._operation, status))
        self.send_response(status)
        headers = headers or {}
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))  # also for HEAD: the size the GET would send
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        body = self._read_body()
        segments = [unquote(part) for part in url.path.split("/")[1:]]
        route = self._route(method, segments)
        self._operation = route[0] if route is not None else None
        try:
            if route is None:
                raise HubError(404, f"The local test Hub does not implement {method} {url.path}")
            operation, handler, args = route
            failure = self.hub._take_failure(operation, method)
            if failure is not None:
                raise HubError(failure.status, failure.message)
            handler(*args, query=query, body=body)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.error_code is not None:
                headers["X-Error-Code"] = error.error_code
            if error.commit is not None:
                headers["X-Repo-Commit"] = error.commit
            self._send_json({"error": error.message, **error.extra}, status=error.status, headers=headers)
        except Exception as error:  # a bug in the server: answer it instead of hanging the client
            logger.exception("local hub: %s %s failed", method, url.path)
            self._send_json({"error": f"local test Hub crashed: {error!r}"}, status=500)

    def _route(self, method: str, seg: list[str]) -> tuple[str, Any, tuple] | None:
        """(operation name, handler, positional args) for a request path split into unquoted segments."""
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if method == "POST" and rest == ["repos", "create"]:
                return "create_repo", self._create_repo, ()
            if method == "DELETE" and rest == ["repos", "delete"]:
                return "delete_repo", self._delete_repo, ()
            if method == "GET" and rest == ["whoami-v2"]:
                return "whoami", self._whoami, ()
            if method == "POST" and rest == ["validate-yaml"]:
                return "validate_yaml", self._validate_yaml, ()
            if len(rest) >= 3 and rest[0] in _REPO_TYPES:
                repo_type, repo_id, tail = _REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                if method == "GET" and not tail:
                    return "repo_info", self._repo_info, (repo_type, repo_id, DEFAULT_BRANCH)
                if method == "GET" and len(tail) == 2 and tail[0] == "revision":
                    return "repo_info", self._repo_info, (repo_type, repo_id, tail[1])
                if method == "GET" and len(tail) >= 2 and tail[0] == "tree":
                    return "tree", self._tree, (repo_type, repo_id, tail[1], "/".join(tail[2:]))
                if method == "POST" and len(tail) == 2 and tail[0] == "preupload":
                    return "preupload", self._preupload, (repo_type, repo_id, tail[1])
                if method == "POST" and len(tail) == 2 and tail[0] == "commit":
                    return "commit", self._commit, (repo_type, repo_id, tail[1])
                if method == "POST" and len(tail) == 2 and tail[0] == "paths-info":
                    return "paths_info", self._paths_info, (repo_type, repo_id, tail[1])
                if method == "POST" and len(tail) == 2 and tail[0] == "branch":
                    return "create_branch", self._create_branch, (repo_type, repo_id, tail[1])
            return None
        if method in ("GET", "HEAD") and "resolve" in seg:
            index = seg.index("resolve")
            repo_parts, tail = seg[:index], seg[index + 1 :]
            repo_type = "model"
            if repo_parts and repo_parts[0] in _REPO_TYPES and len(repo_parts) == 3:
                repo_type, repo_parts = _REPO_TYPES[repo_parts[0]], repo_parts[1:]
            if len(repo_parts) == 2 and len(tail) >= 2:
                return "resolve", self._resolve, (repo_type, "/".join(repo_parts), tail[0], "/".join(tail[1:]))
        return None

    # ------------------------------------------------------------------ endpoints

    def _whoami(self, *, query: dict, body: bytes) -> None:
        self._require_auth()
        self._send_json({"type": "user", "name": self.hub.user, "orgs": [], "auth": {"type": "access_token"}})

    def _create_repo(self, *, query: dict, body: bytes) -> None:
        self._require_auth()
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIXES:
            raise HubError(400, f"Unsupported repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = _repo_url_prefix(self.hub.endpoint, repo_type, repo_id)
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:  # the Hub's 409 carries the url: `exist_ok=True` reads it
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            self.hub._create_repo(repo_type, repo_id, private)
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, *, query: dict, body: bytes) -> None:
        self._require_auth()
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
            del self.hub.repos[(repo_type, repo_id)]
        self._send_json({})

    def _validate_yaml(self, *, query: dict, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        errors, warnings = _validate_card_yaml(payload.get("content", ""), payload.get("repoType") or "model")
        status = 400 if errors else 200
        self._send_json(
            {"errors": [{"message": m} for m in errors], "warnings": [{"message": m} for m in warnings]}, status
        )

    def _repo_info(self, repo_type: str, repo_id: str, revision: str, *, query: dict, body: bytes) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id, self._authorized())
            commit = repo.commits[self.hub._resolve_revision(repo, revision)]
            files = dict(commit.files)
            created_at, private = repo.created_at, repo.private
        with_blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(files[path]), blobId=git_blob_sha1(files[path]))
            siblings.append(sibling)
        card_data = _card_data(files)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": created_at,
            "private": private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card_data or {}).get("tags") or []),
            "siblings": siblings,
            "usedStorage": sum(len(content) for content in files.values()),
        }
        if card_data is not None:
            info["cardData"] = card_data
            for key in ("library_name", "pipeline_tag"):
                if key in card_data:
                    info[key] = card_data[key]
            if "model-index" in card_data:
                info["model-index"] = card_data["model-index"]
        self._send_json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, *, query: dict, body: bytes) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id, self._authorized())
            commit = repo.commits[self.hub._resolve_revision(repo, revision)]
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries = _tree_entries(commit.files, path, recursive)
        if query.get("expand", ["false"])[0].lower() == "true":
            for entry in entries:
                entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        self._send_json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, *, query: dict, body: bytes) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id, self._authorized())
            commit = repo.commits[self.hub._resolve_revision(repo, revision)]
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                content = commit.files[path]
                entries.append({"type": "file", "oid": git_blob_sha1(content), "size": len(content), "path": path})
            else:
                parent, _, _ = path.rpartition("/")
                with contextlib.suppress(HubError):
                    entries.extend(e for e in _tree_entries(commit.files, parent, False) if e["path"] == path)
        self._send_json(entries)

    def _preupload(self, repo_type: str, repo_id: str, revision: str, *, query: dict, body: bytes) -> None:
        self._require_auth()
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            head = self.hub._resolve_revision(repo, revision)
            current = {path: git_blob_sha1(content) for path, content in repo.commits[head].files.items()}
        answer = [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": current.get(item["path"])}
            for item in json.loads(body or b"{}").get("files", [])
        ]
        self._send_json({"files": answer, "commitOid": head})

    def _commit(self, repo_type: str, repo_id: str, revision: str, *, query: dict, body: bytes) -> None:
        self._require_auth()
        if query.get("create_pr", ["0"])[0] == "1":
            raise HubError(400, "The local test Hub does not support pull requests (create_pr=True).")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
            head = repo.branches[revision]
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and not head.startswith(parent_commit):
                raise HubError(412, f"A commit has happened since. Parent {parent_commit} is not the head {head}.")
            files = dict(repo.commits[head].files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                    files[path] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                elif key == "lfsFile":
                    raise HubError(400, f"The local test Hub stores regular files only, got an LFS pointer for {path}")
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            commit = self.hub._new_commit(repo, head, header.get("summary", ""), header.get("description", ""), files)
            repo.branches[revision] = commit.sha
        commit_url = f"{_repo_url_prefix(self.hub.endpoint, repo_type, repo_id)}/commit/{commit.sha}"
        self._send_json({"success": True, "commitOid": commit.sha, "commitUrl": commit_url, "pullRequestUrl": None})

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, *, query: dict, body: bytes) -> None:
        self._require_auth()
        starting_point = json.loads(body or b"{}").get("startingPoint") or DEFAULT_BRANCH
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self.hub._resolve_revision(repo, starting_point)
        self._send_json({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, *, query: dict, body: bytes) -> None:
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id, self._authorized())
            sha = self.hub._resolve_revision(repo, revision)
            content = repo.commits[sha].files.get(path)
        if content is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=sha)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(content)}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        start = _range_start(self.headers.get("Range"), len(content))
        if start is None:
            self._send(200, content, headers)
            return
        headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
        self._send(206, content[start:], headers)


def _range_start(range_header: str | None, size: int) -> int | None:
    """Start offset of a `bytes=N-` range (the only form the client sends, to resume a download)."""
    if not range_header:
        return None
    match = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
    if match is None:
        raise HubError(416, f"Unsupported Range header {range_header!r}")
    start = int(match.group(1))
    if start >= size:
        raise HubError(416, f"Range {range_header!r} starts past the end of the file ({size} bytes)")
    return start


@contextlib.contextmanager
def local_hub(hf_home: str | os.PathLike, *, disable_xet: bool = True) -> Iterator[HubServer]:
    """A started server with the client pointed at it, outside pytest fixtures (e.g. in a script or benchmark)."""
    with HubServer() as server, pytest.MonkeyPatch.context() as monkeypatch:
        server.configure_client(monkeypatch, hf_home, disable_xet=disable_xet)
        yield server


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A fresh local Hub per test, with the client configured for it (fresh `HF_HOME`, fake token, Xet off)."""
    with HubServer() as server:
        server.configure_client(monkeypatch, tmp_path_factory.mktemp("hf_home"))
        yield server
