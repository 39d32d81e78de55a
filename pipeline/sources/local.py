"""A safetensors checkpoint in a directory: the `local` source, and the copy-and-check step the hub source shares.

Only the files a runtime needs are copied (ALLOW_PATTERNS, the same list the hub source downloads). Pickled
weights (.bin, .pt, ...) are never copied: loading them can run arbitrary code, and every exporter here reads
safetensors.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.params import ModelParams
from pipeline.sources import checkpoint

# Matched like huggingface_hub's allow_patterns (fnmatch; `*` also crosses `/`).
ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer.model", "*.jinja", "*.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_SHARD_INDEX = "model.safetensors.index.json"


def allowed(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in ALLOW_PATTERNS)


def listing(root: Path) -> list[str]:
    """Files under `root` as sorted relative posix paths; symlinks followed (an HF snapshot is all links), hidden
    paths skipped (.git, the .cache/huggingface of `hf download --local-dir`)."""
    names = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return sorted(n.as_posix() for n in names if not any(part.startswith(".") for part in n.parts))


def refuse_pickle_only(names: list[str], where: str) -> None:
    """Fail unless `names` holds safetensors weights, saying so plainly when the only weights are pickles."""
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise PipelineError(
            f"{where}: weights are only pickles ({', '.join(pickles[:3])}); pickled checkpoints are refused "
            "(loading them can run code): convert them to safetensors first"
        )
    raise PipelineError(f"{where}: no *.safetensors weights found")


def validate_safetensors(path: Path, label: str) -> None:
    """Parse the header and check the declared tensor offsets cover the file exactly (catches truncation)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            f.keys()
    except SafetensorError as e:
        raise PipelineError(f"{label}: corrupt safetensors file ({e})") from None


def check_shards(root: Path, names: list[str], where: str) -> None:
    """A sharded checkpoint must bring every shard its index names (a half-finished download does not)."""
    if _SHARD_INDEX not in names:
        return
    index = json.loads((root / _SHARD_INDEX).read_text())
    missing = sorted(set(index.get("weight_map", {}).values()) - set(names))
    if missing:
        raise PipelineError(f"{where}: {_SHARD_INDEX} names shards that are missing: {', '.join(missing[:3])}")


def _copy_hashed(src: Path, dst: Path, chunk: int = 1 << 22) -> str:
    """Copy bytes (never a link: outs must not point into a cache) and return the sha256 of what was copied."""
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(chunk):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def copy_checkpoint(src: Path, dest: Path, where: str) -> dict[str, str]:
    """Copy the allowed files of checkpoint `src` into `dest`; returns {file: sha256 of the bytes copied}."""
    names = listing(src)
    refuse_pickle_only(names, where)
    wanted = [n for n in names if allowed(n)]
    if "config.json" not in wanted:
        raise PipelineError(f"{where}: no config.json; not a transformers checkpoint")
    check_shards(src, wanted, where)
    hashes = {}
    for name in wanted:
        size = (src / name).stat().st_size
        if size > 1 << 28:
            print(f"fetch: copying {name} ({size / 2**30:.1f} GiB)", file=sys.stderr)
        hashes[name] = _copy_hashed(src / name, dest / name)
    return hashes


def validate_weights(dest: Path, names: list[str], where: str) -> None:
    for name in names:
        if name.endswith(".safetensors"):
            validate_safetensors(dest / name, f"{where}/{name}")


def materialize(model: ModelParams, dest: Path) -> dict:
    src = Path(model.id).expanduser()
    if not src.is_dir():
        raise PipelineError(f"{model.id}: local checkpoint directory not found")
    hashes = copy_checkpoint(src.resolve(), dest, model.id)
    validate_weights(dest, list(hashes), model.id)
    checkpoint.check(dest, model.id)
    # A directory has no commit: identify it by its content (the files and their hashes).
    digest = hashlib.sha256("".join(f"{h}  {n}\n" for n, h in sorted(hashes.items())).encode()).hexdigest()
    return {"resolved": f"sha256:{digest}", "files": sorted(hashes)}
