"""A STAND-IN for the Hugging Face Hub, for tests only: a standard-library HTTP server on 127.0.0.1.

There is no uploadable hub server on PyPI (olah, used by tests/hubmirror.py, is read-only), so this file implements
just the endpoints that the real `huggingface_hub.HfApi` client (1.21) calls when `pipeline/publish.py` creates a
repo, commits, tags, lists and downloads:

  POST /api/repos/create                          create_repo (409 when it exists)
  POST /api/validate-yaml                         the commit's README.md metadata check (accepts everything)
  GET  /api/models/{repo}[/revision/{rev}]        model_info / repo_info (sha, siblings)
  POST /api/models/{repo}/preupload/{rev}         "regular" (inline base64 in the commit) below `lfs_threshold`
                                                  bytes, "lfs" from it (the hub: 10 MB, and its .gitattributes
                                                  patterns, which the stand-in does not model)
  POST /{repo}.git/info/lfs/objects/batch         the LFS batch API: no action for an object it holds; a single PUT
                                                  up to `part_size` bytes, else multipart (`chunk_size` and one URL
                                                  per part, then a completion POST), and a verify action
  PUT  /lfs/object|part/...  POST /lfs/complete/...   the "storage" side (presigned: a per-upload key in the URL,
                                                  no token), which hashes what arrives and refuses (400) bytes
                                                  whose sha256 or size is not the object's
  POST /{repo}.git/info/lfs/objects/verify        200 when the object is stored with that size
  POST /api/models/{repo}/commit/{rev}            NDJSON: header, file (base64), lfsFile (refused unless its
                                                  object was uploaded and verified), deletedFile
  GET  /api/models/{repo}/refs                    list_repo_refs
  POST /api/models/{repo}/tag/{rev}               create_tag (409 when the tag exists)
  GET  /api/models/{repo}/tree/{rev}              list_repo_tree / list_repo_files
  HEAD|GET /{repo}/resolve/{rev}/{path}           hf_hub_download / snapshot_download (LFS files streamed from
                                                  disk, with X-Linked-Etag = sha256 as the hub sends)

What it does not model: Xet uploads (huggingface_hub takes them whenever hf_xet is installed, which it is; the
client's HF_HUB_DISABLE_XET makes it take the LFS path, and `xet-write-token` answers 501 saying so), permissions
beyond one token, pull requests, pagination. Writes require `Authorization: Bearer <token>` when the server is given a
token. Repos live in memory, LFS objects in files under `storage` (a temporary directory by default) and are
streamed in both directions, so a multi-GB upload costs the server no memory (bench/publish_large.py); `commits`
counts commits per repo so a test can see that a publish made none, `lfs_uploads` records each verified upload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlparse

HUB_LFS_THRESHOLD = 10 * 1000 * 1000  # the hub's size above which preupload answers "lfs"
CHUNK = 1 << 20


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Lfs(NamedTuple):
    """A file committed as an LFS pointer; its bytes are the object `oid` in the server's storage."""
    oid: str  # sha256 of the content
    size: int

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.oid}\nsize {self.size}\n".encode()


def blob_id(entry: bytes | Lfs) -> str:
    """The git blob sha1 the hub lists: of the content, or of the pointer for an LFS file."""
    return git_sha1(entry.pointer() if isinstance(entry, Lfs) else entry)


def size_of(entry: bytes | Lfs) -> int:
    return entry.size if isinstance(entry, Lfs) else len(entry)


class Repo:
    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes | Lfs]] = {}  # oid -> full file tree
        self.branches = {"main": self._commit(None, {}, "initial commit")}
        self.tags: dict[str, str] = {}

    def _commit(self, parent: str | None, files: dict[str, bytes | Lfs], summary: str) -> str:
        h = hashlib.sha1(f"{parent}\n{summary}\n".encode())
        for name in sorted(files):
            h.update(f"{name}:{blob_id(files[name])}\n".encode())
        self.commits[h.hexdigest()] = dict(files)
        return h.hexdigest()

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        return self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)


class HubServer:
    def __init__(self, token: str | None = None, *, lfs_threshold: int = HUB_LFS_THRESHOLD,
                 part_size: int = 64 << 20, storage: Path | None = None) -> None:
        self.token = token
        self.lfs_threshold, self.part_size = lfs_threshold, part_size
        self._tmp = None if storage else tempfile.TemporaryDirectory(prefix="hubserver-")
        self.storage = Path(storage or self._tmp.name)
        (self.storage / "lfs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.log: list[str] = []  # request lines (never headers)
        self.pending: dict[str, dict] = {}  # upload key -> {"oid", "size", "parts"}: the presigned uploads
        self.lfs_uploads: list[dict] = []  # {"oid", "size", "transfer", "parts"} of every upload verified
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def lfs_object(self, oid: str) -> Path:
        return self.storage / "lfs" / oid

    def has_object(self, oid: str, size: int) -> bool:
        path = self.lfs_object(oid)
        return path.is_file() and path.stat().st_size == size

    def _store(self, chunks, oid: str, size: int) -> str | None:
        """Write `chunks` as LFS object `oid`, hashing them on the way; the reason it is refused, or None."""
        tmp = self.storage / "lfs" / f".{oid}.{secrets.token_hex(4)}"
        digest, n = hashlib.sha256(), 0
        with open(tmp, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                n += len(chunk)
                f.write(chunk)
        if (digest.hexdigest(), n) != (oid, size):
            tmp.unlink()
            return f"content has sha256 {digest.hexdigest()} and {n} bytes, not the object's {oid} and {size}"
        tmp.replace(self.lfs_object(oid))
        return None

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
                return b"".join(self._chunks())

            def _chunks(self):
                """The request body, streamed: by Content-Length, or chunked transfer encoding (how httpx sends a
                file object whose length it cannot tell)."""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return
                        while n:
                            data = self.rfile.read(min(n, CHUNK))
                            n -= len(data)
                            yield data
                        self.rfile.readline()
                left = int(self.headers.get("Content-Length") or 0)
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        return
                    left -= len(data)
                    yield data

            def _send_object(self, path: Path, headers: dict):
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(path.stat().st_size))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    with open(path, "rb") as f:
                        shutil.copyfileobj(f, self.wfile, CHUNK)

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
                        if tail[:1] == ["xet-write-token"]:
                            return self._send(501, {"error": "the stand-in speaks LFS, not Xet: set HF_HUB_DISABLE_XET=1"})
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
                            return self._send(200, [
                                {"type": "file", "path": f, "size": size_of(d), "oid": blob_id(d),
                                 **({"lfs": {"oid": d.oid, "size": d.size, "pointerSize": len(d.pointer())}}
                                    if isinstance(d, Lfs) else {})}
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
                        if isinstance(data, Lfs):
                            return self._send_object(hub.lfs_object(data.oid), {
                                "X-Repo-Commit": oid, "ETag": f'"{data.oid}"', "X-Linked-Etag": f'"{data.oid}"',
                                "X-Linked-Size": str(data.size)})
                        return self._send(200, raw=data, headers={"X-Repo-Commit": oid, "ETag": f'"{git_sha1(data)}"'})
                    self._send(404, {"error": f"not implemented by the stand-in: {path}"})

            def do_PUT(self):
                # /lfs/object/<key> (a whole object) or /lfs/part/<key>/<n>: storage, authorised by the key alone
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                upload = hub.pending.get(parts[2]) if len(parts) >= 3 and parts[:2] in (["lfs", "object"],
                                                                                        ["lfs", "part"]) else None
                if upload is None:
                    self._body()
                    return self._send(403, {"error": "no such upload (expired or never granted)"})
                if parts[1] == "object":
                    refused = hub._store(self._chunks(), upload["oid"], upload["size"])
                    if refused:
                        return self._send(400, {"error": refused})
                    with hub.lock:
                        hub.pending.pop(parts[2], None)
                        hub.lfs_uploads.append({"oid": upload["oid"], "size": upload["size"], "transfer": "basic",
                                                "parts": 1})
                    return self._send(200, {})
                n = int(parts[3])
                if not 1 <= n <= upload["parts"]:
                    self._body()
                    return self._send(400, {"error": f"part {n} of {upload['parts']}"})
                part, md5 = hub.storage / "lfs" / f".{parts[2]}.part{n}", hashlib.md5()
                with open(part, "wb") as f:
                    for chunk in self._chunks():
                        md5.update(chunk)
                        f.write(chunk)
                upload.setdefault("etags", {})[n] = md5.hexdigest()
                self._send(200, {}, {"ETag": f'"{md5.hexdigest()}"'})

            def _complete(self, key: str, body: bytes):
                """The multipart completion: every part, by the etags the client got, joined and verified."""
                upload = hub.pending.get(key)
                if upload is None:
                    return self._send(403, {"error": "no such upload (expired or never granted)"})
                req = json.loads(body)
                etags = upload.get("etags", {})
                listed = [(p["partNumber"], p["etag"].strip('"')) for p in req.get("parts", [])]
                if req.get("oid") != upload["oid"] or listed != [(n, etags.get(n)) for n in
                                                                  range(1, upload["parts"] + 1)]:
                    return self._send(400, {"error": f"completion lists parts {listed}, not the "
                                                      f"{upload['parts']} uploaded for {upload['oid']}"})
                names = [hub.storage / "lfs" / f".{key}.part{n}" for n in range(1, upload["parts"] + 1)]

                def joined():
                    for name in names:
                        with open(name, "rb") as f:
                            while chunk := f.read(CHUNK):
                                yield chunk
                        name.unlink()

                refused = hub._store(joined(), upload["oid"], upload["size"])
                hub.pending.pop(key, None)
                if refused:
                    return self._send(400, {"error": refused})
                with hub.lock:
                    hub.lfs_uploads.append({"oid": upload["oid"], "size": upload["size"], "transfer": "multipart",
                                            "parts": upload["parts"]})
                return self._send(200, {})

            def _batch(self, repo_name: str, body: bytes):
                req = json.loads(body)
                if req.get("operation") != "upload" or req.get("hash_algo", "sha256") != "sha256":
                    return self._send(400, {"error": "the stand-in takes sha256 uploads only"})
                multipart = "multipart" in req.get("transfers", ["basic"])
                objects = []
                for obj in req["objects"]:
                    oid, size = obj["oid"], obj["size"]
                    entry = {"oid": oid, "size": size, "authenticated": True}
                    if not hub.has_object(oid, size):  # an object it holds needs no upload (no "actions")
                        key = secrets.token_hex(16)
                        n = max(1, -(-size // hub.part_size))
                        hub.pending[key] = {"oid": oid, "size": size, "parts": n}
                        if n > 1 and multipart:
                            upload = {"href": f"{hub.endpoint}/lfs/complete/{key}", "header": {
                                "chunk_size": str(hub.part_size),
                                **{str(i): f"{hub.endpoint}/lfs/part/{key}/{i}" for i in range(1, n + 1)}}}
                        else:
                            hub.pending[key]["parts"] = 1
                            upload = {"href": f"{hub.endpoint}/lfs/object/{key}"}
                        entry["actions"] = {"upload": upload, "verify": {
                            "href": f"{hub.endpoint}/{repo_name}.git/info/lfs/objects/verify"}}
                    objects.append(entry)
                self._send(200, {"transfer": "multipart" if multipart else "basic", "objects": objects})

            def do_POST(self):
                path = urlparse(self.path).path
                body = self._body()
                if path.startswith("/lfs/complete/"):  # storage: the client sends no token here
                    return self._complete(path.rsplit("/", 1)[1], body)
                if not self._authorized():
                    return
                if ".git/info/lfs/objects/" in path:
                    repo_name, action = path.strip("/").split(".git/info/lfs/objects/")
                    if repo_name not in hub.repos:
                        return self._send(404, {"error": "Repository not found"})
                    if action == "batch":
                        return self._batch(repo_name, body)
                    if action == "verify":
                        req = json.loads(body)
                        return self._send(200 if hub.has_object(req["oid"], req["size"]) else 404, {})
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
                        def remote_oid(name):  # as the client compares: sha256 for LFS, git sha1 for the rest
                            d = files.get(name)
                            return None if d is None else d.oid if isinstance(d, Lfs) else git_sha1(d)

                        out = [{"path": f["path"], "shouldIgnore": False, "oid": remote_oid(f["path"]),
                                "uploadMode": "lfs" if f["size"] >= hub.lfs_threshold else "regular"}
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
                            elif key == "lfsFile":
                                if val.get("algo") != "sha256" or not hub.has_object(val["oid"], val["size"]):
                                    return self._send(400, {"error": f"{val['path']}: LFS object {val['oid']} "
                                                                     "was never uploaded"})
                                files[val["path"]] = Lfs(val["oid"], val["size"])
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
