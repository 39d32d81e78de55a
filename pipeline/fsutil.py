"""Atomic directory writes and sha256 manifests: no stage leaves a half-written artifact behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

MANIFEST = "manifest.sha256.json"


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temp dir beside `out`; on success it replaces `out`, on any failure it is removed.

    The temp dir lives on the same filesystem so the final rename is atomic. Leftovers of a killed
    run (`.<name>.partial-<pid>`) are swept first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
    tmp.rename(out)


def write_json(path: Path, data: object) -> None:
    """Write JSON via a temp file + rename so readers never see a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under `root` (relative posix paths), the manifest itself excluded."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(root: Path) -> dict[str, str]:
    files = hash_tree(root)
    write_json(Path(root) / MANIFEST, files)
    return files


def verify_manifest(root: Path) -> None:
    """Fail naming the first file whose bytes differ from the manifest written when `root` was made."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{root}: no {MANIFEST}; re-run its stage (dvc repro) to rebuild it")
    expected = json.loads(path.read_text())
    actual = hash_tree(root)
    for name, digest in expected.items():
        if name not in actual:
            raise PipelineError(f"{root / name}: listed in {MANIFEST} but missing")
        if actual[name] != digest:
            raise PipelineError(
                f"{root / name}: sha256 mismatch (manifest {digest[:12]}…, file {actual[name][:12]}…); "
                "the file was changed or corrupted after it was written"
            )
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise PipelineError(f"{root / extra[0]}: not in {MANIFEST}; the directory was changed after it was written")
