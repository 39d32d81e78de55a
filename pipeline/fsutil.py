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
DISK_FULL = 64 << 20  # bytes free under which a failed write is reported as a full disk


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temp dir beside `out`; on success it replaces `out`, on any failure it is removed.

    The temp dir lives on the same filesystem so the final rename is atomic. Leftovers of a killed
    run (`.<name>.partial-<pid>`) are swept first.
    """
    out = Path(out)
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as e:
        # Writers report a full disk in their own words (OpenVINO: "basic_ios::clear: iostream error"); the free
        # space is the tell, and it has to be read before the partial output is removed.
        free = shutil.disk_usage(tmp).free
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # innermost first; a dir something else wrote into meanwhile stays
            with contextlib.suppress(OSError):
                d.rmdir()
        if free < DISK_FULL and isinstance(e, Exception) and not isinstance(e, PipelineError):  # a reason already
            raise PipelineError(f"{out}: disk full while writing it ({free // 1024} KiB left); nothing was "
                                "kept") from e
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
    tmp.rename(out)


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename so readers never see a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path, skip: str = MANIFEST) -> dict[str, str]:
    """sha256 of every regular file under `root` (relative posix paths), the manifest `skip` excluded."""
    root = Path(root)
    return {
        rel: sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (rel := p.relative_to(root).as_posix()) != skip
    }


def git_blob_sha1(path: Path) -> str:
    """The id git (and the Hugging Face hub's tree listing) gives a file's content."""
    h = hashlib.sha1(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path) -> dict[str, str]:
    files = hash_tree(root)
    write_json(Path(root) / MANIFEST, files)
    return files


def verify_manifest(root: Path) -> None:
    """Fail naming the first file whose bytes differ from the manifest written when `root` was made."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{root}: no {MANIFEST}; re-run its stage (dvc repro) to rebuild it")
    check_tree(root, json.loads(path.read_text()), MANIFEST)


def check_tree(root: Path, expected: dict[str, str], listed_in: str) -> None:
    """Fail in one line naming the first file under `root` that is missing, changed or extra against `expected`
    (relative path -> sha256, as the manifest `listed_in` records it)."""
    root = Path(root)
    actual = hash_tree(root, skip=listed_in)
    for name, digest in expected.items():
        if name not in actual:
            raise PipelineError(f"{root / name}: listed in {listed_in} but missing")
        if actual[name] != digest:
            raise PipelineError(
                f"{root / name}: sha256 mismatch ({listed_in} {digest[:12]}…, file {actual[name][:12]}…); "
                "the file was changed or corrupted after it was written"
            )
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise PipelineError(f"{root / extra[0]}: not in {listed_in}; the directory was changed after it was written")


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (a copy across file systems): a DVC output linked again costs no disk, and the
    pipeline never opens one for writing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
