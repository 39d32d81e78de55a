"""Integrity of what the pipeline wrote, across DVC's cache, and the debris of interrupted runs.

Why this exists: the DVC cache links outputs into the workspace (`cache.type = hardlink`, .dvc/config), so a
workspace file and its cache object are one inode. An in-place edit of either (root ignores the read-only bit, and
so do editors that write in place) changes both, DVC trusts a file that is still linked to its cache object without
re-hashing it, and `dvc repro -f` of the producing stage relinks the good new bytes to the corrupted object of the
same name. Every output directory carries a sha256 manifest (manifest.sha256.json, or a release's manifest.json,
or a native build's build-manifest.json); `verify` checks the files against it on every `dvc repro` (stage `check` is
always run), re-hashing only files whose size, mtime or inode changed since they last verified (the stamps live in
.aipc/verified.json, untracked). `repair` deletes each corrupted file's cache object and every workspace link to it,
so that `dvc repro` rebuilds them from their stages.

Trade-off: with `copy`, an edit could not reach the cache, at twice the disk (the default model's outputs: see the
README); hardlinks cost nothing extra, and this check makes an edit fail the next `dvc repro` instead of spreading.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline import fsutil
from pipeline.errors import PipelineError

STATE = Path(".aipc") / "verified.json"
MANIFESTS = (fsutil.MANIFEST, "manifest.json", "build-manifest.json")
TREES = ("artifacts", "releases")


def _listed(manifest: Path) -> dict[str, str]:
    """relative path -> sha256 of every file a manifest lists (each kind keeps them under its own keys)."""
    data = json.loads(manifest.read_text())
    if manifest.name == "manifest.json":
        return {name: meta["sha256"] for name, meta in data["files"].items()}
    if manifest.name == "build-manifest.json":
        return dict(data["files"])
    return dict(data)


def manifests(root: Path) -> Iterator[Path]:
    for tree in TREES:
        for name in MANIFESTS:
            yield from sorted((Path(root) / tree).glob(f"*/*/{name}"))


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def corrupted(root: Path) -> list[tuple[Path, str, str]]:
    """(file, sha256 listed, sha256 found) of every existing output file whose bytes are not what its manifest lists.
    A missing file is DVC's to restore, not corruption."""
    root = Path(root)
    state_file = root / STATE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    bad, seen = [], {}
    hashed: dict[tuple, str] = {}  # hard links (a release and its artifact, ov-fp16 and the IR) are hashed once
    for manifest in manifests(root):
        for name, digest in _listed(manifest).items():
            path = manifest.parent / name
            if not path.is_file():
                continue
            key = path.relative_to(root).as_posix()
            stamp = _stamp(path)
            known = state.get(key)
            if known and known[0] == stamp and known[1] == digest:
                seen[key] = known
                continue
            if tuple(stamp) not in hashed:
                hashed[tuple(stamp)] = fsutil.sha256_file(path)
            actual = hashed[tuple(stamp)]
            if actual != digest:
                bad.append((path, digest, actual))
            else:
                seen[key] = [stamp, digest]
    state_file.parent.mkdir(parents=True, exist_ok=True)
    fsutil.write_json(state_file, seen)
    return bad


def verify(root: Path) -> None:
    """Fail in one line naming the first corrupted output file and the repair."""
    bad = corrupted(root)
    if bad:
        path, want, got = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise PipelineError(
            f"{Path(path).relative_to(root)}: sha256 {got[:12]}… but its manifest says {want[:12]}…{more}: changed "
            "in place after it was written (its DVC cache object is the same file); run `aipc repair` to rebuild it")


def _links(root: Path, inode: int, device: int) -> list[Path]:
    """Every path under the workspace's outputs and the DVC cache that is this inode."""
    found = []
    for top in (*TREES, ".dvc/cache"):
        for dirpath, _, files in os.walk(Path(root) / top):
            for name in files:
                path = Path(dirpath) / name
                st = path.lstat()
                if st.st_ino == inode and st.st_dev == device:
                    found.append(path)
    return found


def repair(root: Path) -> list[Path]:
    """Delete each corrupted file, its DVC cache object and every other workspace link to it; the paths deleted.
    `dvc repro` then reruns exactly the stages whose outputs lost a file."""
    root = Path(root)
    removed = []
    for path, _, _ in corrupted(root):
        if not path.exists():  # already gone as another corrupted file's link
            continue
        st = path.stat()
        for link in _links(root, st.st_ino, st.st_dev):
            link.unlink()
            removed.append(link)
    return removed


def sweep(root: Path) -> list[Path]:
    """Remove what interrupted runs left: staging dirs (.<name>.partial-<pid>) of processes no longer alive (a killed
    stage whose outputs DVC later restored from its run cache never ran the sweep in fsutil.staged_dir; DVC's lock
    files half-written by a killed `dvc repro`, pipeline/dvcpatch.py) and model dirs left empty."""
    removed = []
    root = Path(root)
    staged = [p for tree in TREES for p in (root / tree).glob("*/.*.partial-*")]
    written = [p for pattern in (".*.partial-*", "models/*/.*.partial-*", ".dvc/tmp/.*.partial-*")
               for p in root.glob(pattern)]
    for partial in sorted(staged + written):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
            removed.append(partial)
    for tree in TREES:
        for model in sorted((Path(root) / tree).glob("*/")):
            if model.is_dir() and not any(model.iterdir()):
                model.rmdir()
                removed.append(model)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
