"""Hub checkpoints: `snapshot_download` at a pinned revision into the HF cache, then copied out and verified.

Works offline: with HF_HUB_OFFLINE=1, or when the hub is unreachable, huggingface_hub resolves the revision from
the HF cache; HF_ENDPOINT points it at a mirror instead of huggingface.co. Both are read when huggingface_hub is
first imported, so they must be set before the process starts.

snapshot_download does not check what it finds in the cache, so every file is checked against the name of its
cache blob: the sha256 for LFS files (the weights), the git blob sha1 for small files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fsutil import git_blob_sha1
from pipeline.params import ModelParams
from pipeline.sources import checkpoint, local


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _snapshot(repo: str, revision: str) -> Path:
    import httpx
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    how = (
        f"on a connected machine run `hf download {repo} --revision {revision}` and copy its HF cache "
        f"({constants.HF_HUB_CACHE}) here, or set HF_ENDPOINT to a mirror that has it"
    )
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=local.ALLOW_PATTERNS))
    except RevisionNotFoundError:
        raise PipelineError(
            f"{repo}: revision {revision} not found on {constants.ENDPOINT}; pin an existing commit"
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise PipelineError(
            f"{repo}: repository not found on {constants.ENDPOINT} or not accessible ({_first_line(e)}); "
            "check the id, or log in (`hf auth login`) and accept its license"
        ) from None
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _first_line(e.__cause__ or e)
        raise PipelineError(f"{repo}@{revision}: not in the HF cache and not downloadable ({why}); {how}") from None
    except (httpx.HTTPError, OSError) as e:
        raise PipelineError(
            f"{repo}@{revision}: download from {constants.ENDPOINT} failed ({_first_line(e)}); {how}"
        ) from None


def _remote_files(repo: str, commit: str) -> list[str]:
    """The repo's file names at `commit`, to tell a pickle-only repo from an incomplete cache; [] when offline."""
    import httpx
    from huggingface_hub import HfApi

    try:
        return [s.rfilename for s in HfApi().model_info(repo, revision=commit).siblings or []]
    except (httpx.HTTPError, OSError):
        return []


def _verify_blobs(snapshot: Path, dest: Path, hashes: dict[str, str], where: str) -> list[str]:
    """Check each copied file against its cache blob's name; returns the files that could not be checked."""
    unchecked = []
    for name, sha256 in hashes.items():
        link = snapshot / name
        blob = link.resolve()
        if not link.is_symlink() or len(blob.name) not in (40, 64):
            unchecked.append(name)  # a cache without symlinks (e.g. Windows without developer mode) keeps no blob names
            continue
        algo, actual = ("sha256", sha256) if len(blob.name) == 64 else ("git sha1", git_blob_sha1(dest / name))
        if actual != blob.name:
            raise PipelineError(
                f"{where}/{name}: {algo} mismatch: HF cache blob {blob.name[:12]}… holds content {actual[:12]}…; "
                f"delete {blob} and fetch again"
            )
    if unchecked:
        print(f"fetch: {where}: cannot verify {', '.join(unchecked)} (HF cache without blob links)", file=sys.stderr)
    return unchecked


def materialize(model: ModelParams, dest: Path) -> dict:
    from huggingface_hub import constants

    assert model.revision  # params.py requires one for hub models
    snapshot = _snapshot(model.id, model.revision)
    commit = snapshot.name  # snapshots/<commit>: what a branch or tag resolved to
    where = f"{model.id}@{commit[:12]}"
    names = local.listing(snapshot)
    if not any(n.endswith(".safetensors") for n in names):
        # Pickled weights were never downloaded (not in ALLOW_PATTERNS): ask the hub whether the repo has any.
        local.refuse_pickle_only(names + _remote_files(model.id, commit), where)
    hashes = local.copy_checkpoint(snapshot, dest, where)
    unchecked = _verify_blobs(snapshot, dest, hashes, where)
    local.validate_weights(dest, list(hashes), where)
    checkpoint.check(dest, where)
    return {
        "resolved": commit,
        "files": sorted(hashes),
        "endpoint": None if constants.HF_HUB_OFFLINE else constants.ENDPOINT,
        **({"unverified": unchecked} if unchecked else {}),
    }
