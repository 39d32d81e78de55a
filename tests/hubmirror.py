"""Hub stand-ins built from a local checkpoint, for testing the hub source without huggingface.co.

- `hf_cache`: the on-disk HF cache exactly as huggingface_hub writes it (blobs named by sha256 for LFS files and by
  git blob sha1 for the rest, relative symlinks under snapshots/<commit>, refs/main without a trailing newline).
- `git_repo` + `olah`: a git repository with LFS pointers, served over loopback by olah (PyPI), a hub-compatible
  read-only mirror; point huggingface_hub at it with HF_ENDPOINT.
- `fetch_in_child`: run the fetch stage in a fresh interpreter, because huggingface_hub reads HF_HUB_OFFLINE,
  HF_ENDPOINT and HF_HUB_CACHE once, at import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LFS = (".safetensors", ".bin")  # what the hub stores through LFS in these tests


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hf_cache(src: Path, cache: Path, repo: str) -> str:
    """Lay out checkpoint `src` as `repo` at branch main in HF cache dir `cache`; returns the commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    listing = [(p.relative_to(src).as_posix(), p.read_bytes()) for p in _files(src)]
    commit = hashlib.sha1("".join(f"{n}:{_sha256(d)}\n" for n, d in listing).encode()).hexdigest()
    for name, data in listing:
        blob = _sha256(data) if name.endswith(LFS) else _git_sha1(data)
        (folder / "blobs").mkdir(parents=True, exist_ok=True)
        (folder / "blobs" / blob).write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(folder / "blobs" / blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)  # no newline: huggingface_hub reads the file verbatim
    return commit


def blob_path(cache: Path, repo: str, commit: str, name: str) -> Path:
    return (cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit / name).resolve()


def git_repo(src: Path, mirrors: Path, repo: str) -> str:
    """Commit checkpoint `src` as `repo` under olah's mirrors dir (models/<org>/<name>); returns the commit.

    LFS files are committed as pointers with their objects in .git/lfs/objects, as `git lfs` leaves them.
    """
    work = mirrors / "models" / repo
    work.mkdir(parents=True)
    git = ["git", "-C", str(work), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    for path in _files(src):
        name = path.relative_to(src).as_posix()
        data = path.read_bytes()
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(LFS):
            oid = _sha256(data)
            obj = work / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
            (work / name).write_text(pointer)
        else:
            (work / name).write_bytes(data)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "checkpoint"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def olah(mirrors: Path, work: Path, timeout: float = 60) -> Iterator[str]:
    """Serve the git repos under `mirrors` with olah on loopback, offline (never proxies huggingface.co);
    yields the endpoint URL for HF_ENDPOINT."""
    port = _free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{work / "repos"}"\n'
        f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\n'
    )
    log = open(work / "olah.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(work / "logs")],
        stdout=log, stderr=subprocess.STDOUT, cwd=work,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"olah exited ({proc.returncode}); see {work / 'olah.log'}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{endpoint}/api/whoami-v2", timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"olah did not start within {timeout} s; see {work / 'olah.log'}")
            time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


_CHILD = """
import json, sys
from pathlib import Path
from pipeline.stages import fetch
from pipeline.errors import PipelineError
from pipeline.params import ModelParams
try:
    print(json.dumps(fetch.run("m", ModelParams.model_validate_json(sys.argv[1]), Path(sys.argv[2]))))
except PipelineError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(1)
"""


def fetch_in_child(model: dict, out: Path, **env: str) -> subprocess.CompletedProcess:
    """Run fetch.run in a fresh interpreter with the HF_* settings in `env` (and no others from this process).
    stdout is JSON: the record, or {"error": <the PipelineError message>} with exit status 1."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(model), str(out)],
        cwd=ROOT, env={**base, "HF_HUB_DISABLE_TELEMETRY": "1", **env}, capture_output=True, text=True,
        timeout=120,
    )
