"""A STAND-IN for the Hugging Face Hub, for tests only: a standard-library HTTP server on 127.0.0.1.

There is no uploadable hub server on PyPI (olah, used by tests/hubmirror.py, is read-only), so this file implements
just the endpoints that the real `huggingface_hub.HfApi` client (1.21) calls when `pipeline/publish.py` creates a
repo, commits, tags, lists and downloads:

  POST /api/repos/create                          create_repo (409 when it exists)
  POST /api/validate-yaml                         the commit's README.md metadata check (accepts everything)
  GET  /api/models/{repo}[/revision/{rev}]        model_info / repo_info (sha, siblings)
  POST /api/models/{repo}/preupload/{rev}         every file "regular" (inline base64 in the commit: no LFS, no Xet)
  POST /api/models/{repo}/commit/{rev}            NDJSON: header, file (base64), deletedFile
  GET  /api/models/{repo}/refs                    list_repo_refs
  POST /api/models/{repo}/tag/{rev}               create_tag (409 when the tag exists)
  GET  /api/models/{repo}/tree/{rev}              list_repo_tree / list_repo_files
  HEAD|GET /{repo}/resolve/{rev}/{path}           hf_hub_download / snapshot_download

What it does not model: LFS and Xet uploads (the real hub's path for large files), permissions beyond one token,
pull requests, pagination. Writes require `Authorization: Bearer <token>` when the server is given a token. State
lives in memory; `commits` counts commits per repo so a test can see that a publish made none.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}  # oid -> full file tree
        self.branches = {"main": self._commit(None, {}, "initial commit")}
        self.tags: dict[str, str] = {}

    def _commit(self, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        h = hashlib.sha1(f"{parent}\n{summary}\n".encode())
        for name in sorted(files):
            h.update(f"{name}:{git_sha1(files[name])}\n".encode())
        self.commits[h.hexdigest()] = dict(files)
        return h.hexdigest()

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        return self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)


class HubServer:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.log: list[str] = []  # request lines (never headers)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def n_commits(self, repo: str) -> int:
        return len(self.repos[repo].commits) - 1  # minus the initial one

    def _handler(hub):  # noqa: N805 - `hub` is the server, `self` the request
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                hub.log.append(f"{self.command} {self.path}")

            def _send(self, code: int, body: object = None, headers: dict | None = None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if code >= 400:
                    self.send_header("X-Error-Message", body.get("error", "") if isinstance(body, dict) else "")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorized(self) -> bool:
                if hub.token is None or self.headers.get("Authorization") == f"Bearer {hub.token}":
                    return True
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def _repo(self, name: str) -> Repo | None:
                repo = hub.repos.get(name)
                if repo is None:
                    self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return repo

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = urlparse(self.path).path
                with hub.lock:
                    if path.startswith("/api/models/"):
                        rest = path[len("/api/models/"):].split("/")
                        name, tail = "/".join(rest[:2]), rest[2:]
                        if (repo := self._repo(name)) is None:
                            return
                        if not tail or tail[0] == "revision":
                            oid = repo.resolve("/".join(tail[1:]) if tail else "main")
                            if oid is None:
                                return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                            files = repo.commits[oid]
                            return self._send(200, {"id": name, "modelId": name, "sha": oid, "private": False,
                                                    "siblings": [{"rfilename": f} for f in sorted(files)]})
                        if tail[0] == "refs":
                            ref = lambda kind, n, o: {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o}  # noqa: E731
                            return self._send(200, {
                                "branches": [ref("heads", n, o) for n, o in repo.branches.items()],
                                "tags": [ref("tags", n, o) for n, o in repo.tags.items()], "converts": []})
                        if tail[0] == "tree":
                            oid = repo.resolve(tail[1]) if len(tail) > 1 else None
                            if oid is None:
                                return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                            files = repo.commits[oid]
                            return self._send(200, [{"type": "file", "path": f, "size": len(d), "oid": git_sha1(d)}
                                                    for f, d in sorted(files.items())])
                        return self._send(404, {"error": f"not implemented by the stand-in: {path}"})
                    # /{org}/{name}/resolve/{rev}/{file...}
                    parts = path.strip("/").split("/")
                    if len(parts) >= 5 and parts[2] == "resolve":
                        if (repo := self._repo("/".join(parts[:2]))) is None:
                            return
                        oid = repo.resolve(parts[3])
                        if oid is None:
                            return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                        fname = unquote("/".join(parts[4:]))
                        data = repo.commits[oid].get(fname)
                        if data is None:
                            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                        return self._send(200, raw=data, headers={"X-Repo-Commit": oid, "ETag": f'"{git_sha1(data)}"'})
                    self._send(404, {"error": f"not implemented by the stand-in: {path}"})

            def do_POST(self):
                path = urlparse(self.path).path
                body = self._body()
                if not self._authorized():
                    return
                with hub.lock:
                    if path == "/api/validate-yaml":
                        return self._send(200, {"errors": [], "warnings": []})
                    if path == "/api/repos/create":
                        req = json.loads(body)
                        name = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                        if name in hub.repos:
                            return self._send(409, {"error": "You already created this model repo", "url": ""})
                        hub.repos[name] = Repo()
                        return self._send(200, {"url": f"{hub.endpoint}/{name}", "name": name})
                    rest = path[len("/api/models/"):].split("/") if path.startswith("/api/models/") else []
                    if len(rest) < 4:
                        return self._send(404, {"error": f"not implemented by the stand-in: {path}"})
                    name, verb, rev = "/".join(rest[:2]), rest[2], unquote("/".join(rest[3:]))
                    if (repo := self._repo(name)) is None:
                        return
                    oid = repo.resolve(rev)
                    if verb == "preupload":
                        files = repo.commits[oid] if oid else {}
                        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                "oid": git_sha1(files[f["path"]]) if f["path"] in files else None}
                               for f in json.loads(body)["files"]]
                        return self._send(200, {"files": out})
                    if verb == "commit":
                        if rev not in repo.branches:
                            return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                        files, summary = dict(repo.commits[repo.branches[rev]]), ""
                        for line in body.splitlines():
                            item = json.loads(line)
                            key, val = item["key"], item["value"]
                            if key == "header":
                                summary = val["summary"]
                                if val.get("parentCommit") not in (None, repo.branches[rev]):
                                    return self._send(412, {"error": "parent commit is not the branch head"})
                            elif key == "file":
                                files[val["path"]] = base64.b64decode(val["content"])
                            elif key == "deletedFile":
                                files.pop(val["path"], None)
                            else:
                                return self._send(400, {"error": f"the stand-in does not take {key!r}"})
                        new = repo._commit(repo.branches[rev], files, summary)
                        repo.branches[rev] = new
                        return self._send(200, {"commitUrl": f"{hub.endpoint}/{name}/commit/{new}",
                                                "commitOid": new, "pullRequestUrl": None})
                    if verb == "tag":
                        tag = json.loads(body)["tag"]
                        if oid is None:
                            return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                        if tag in repo.tags:
                            return self._send(409, {"error": f"Tag {tag} already exists"})
                        repo.tags[tag] = oid
                        return self._send(200, {})
                    self._send(404, {"error": f"not implemented by the stand-in: {path}"})

        return Handler
