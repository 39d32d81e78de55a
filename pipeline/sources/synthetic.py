"""Synthetic checkpoints: a real Phi-3 model's exact config, shard layout and tokenizer, with seeded random weights.

For measuring every stage's memory and time at real size without the hub (or before downloading 8-28 GB): what
a stage costs depends on the shapes, dtypes and files, never on the weights' values. params.yaml:

    models:
      phi3-mini-synthetic:
        source: synthetic
        id: phi-3-mini-4k-instruct      # one of CONFIGS: pipeline/sources/configs/<id>.json
        revision: "seed:0"              # the weights' seed; the same seed writes the same bytes

What is written:
  - config.json: pipeline/sources/configs/<id>.json byte for byte: the published file of that model (its README
    says where each came from and at which revision; two of the four are reconstructions, and say what is missing);
  - model-0000k-of-0000N.safetensors + model.safetensors.index.json: every tensor of Phi3ForCausalLM for that config
    (built on the meta device, so no memory), in BF16, drawn from N(0, initializer_range) by a torch.Generator
    seeded from (seed, tensor name). Sharded like the original: its shard count, tensors in state_dict order, split
    greedily at transformers' default 5 GB, which reproduces the published shard sizes (Phi-3-mini 4.97 + 2.67 GB,
    Phi-3-medium 4.92, 4.95, 4.9, ... GB); a shrunk config (tests) keeps the shard count with balanced shards.
    Only one shard's tensors are in memory at a time;
  - the model's real tokenizer and a generation_config.json with its stop ids: Phi-3's SentencePiece tokenizer
    (pipeline/sources/phi3_tokenizer.py), Phi-4-mini's and Phi-4's byte-level BPE over OpenAI's o200k / cl100k
    ranks (pipeline/sources/tiktoken_tokenizer.py).

Random weights mean nothing for quality, so a synthetic model is never gated or released as if it were real: its
provenance says `"synthetic": true`, the package stage refuses it, and the report lists its rows as "ungated
(random weights)" with no misses.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.params import ModelParams
from pipeline.sources import checkpoint, phi3_tokenizer, tiktoken_tokenizer

CONFIGS_DIR = Path(__file__).with_name("configs")
# config name -> the published checkpoint's shard count (model-0000k-of-0000N.safetensors on the hub)
CONFIGS = {
    "phi-3-mini-4k-instruct": 2,
    "phi-3-mini-128k-instruct": 2,
    "phi-3.5-mini-instruct": 2,
    "phi-3-medium-4k-instruct": 6,
    "phi-4-mini-instruct": 2,
    "phi-4": 6,
}
SEED = re.compile(r"^seed:(\d+)$")
MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB"), which the published shards were cut at
INDEX = checkpoint.SHARD_INDEX
WEIGHTS = "random: seeded N(0, initializer_range) in BF16, not a trained model; for measuring memory and time only"
# Phi-3's stop tokens: <|endoftext|>, <|assistant|>, <|end|> (the chat template ends each turn with <|end|>).
PHI3_STOP_IDS = [32000, 32001, 32007]


def seed_of(revision: str | None) -> int:
    match = SEED.match(revision or "")
    if not match:
        raise PipelineError(f"synthetic revision {revision!r}: expected seed:<non-negative integer>, e.g. seed:0")
    return int(match.group(1))


def published_config(name: str) -> Path:
    if name not in CONFIGS:
        raise PipelineError(f"synthetic id {name!r}: not one of {', '.join(CONFIGS)}")
    return CONFIGS_DIR / f"{name}.json"


def tensor_seed(seed: int, name: str) -> int:
    """One generator seed per (seed, tensor name): a tensor's values do not depend on which shard it lands in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def tensor(name: str, shape: tuple[int, ...], seed: int, std: float):
    import torch

    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, std, generator=generator)


def shard_plan(sizes: list[tuple[str, int]], shards: int) -> list[list[str]]:
    """Tensor names per shard, in order: greedy at MAX_SHARD_BYTES when that gives the published shard count (it
    does at full size), else `shards` contiguous parts as even as the greedy split at the smallest cap allows."""
    def greedy(cap: int) -> list[list[str]]:
        parts: list[list[str]] = [[]]
        used = 0
        for name, size in sizes:
            if parts[-1] and used + size > cap:
                parts.append([])
                used = 0
            parts[-1].append(name)
            used += size
        return parts

    plan = greedy(MAX_SHARD_BYTES)
    if len(plan) == shards:
        return plan
    if len(sizes) < shards:
        raise PipelineError(f"{len(sizes)} tensors cannot fill {shards} shards")
    lo, hi = max(s for _, s in sizes), sum(s for _, s in sizes)
    while lo < hi:  # the smallest cap whose greedy split needs no more than `shards` parts
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(greedy(mid)) <= shards else (mid + 1, hi)
    plan = greedy(lo)
    while len(plan) < shards:  # split the part with most tensors until the count is right
        i = max(range(len(plan)), key=lambda k: len(plan[k]))
        plan[i:i + 1] = [plan[i][: len(plan[i]) // 2], plan[i][len(plan[i]) // 2:]]
    return plan


def expected_shapes(dest: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tensors a checkpoint with `dest`'s config.json holds, in state_dict order."""
    shapes, optional = checkpoint.expected_tensors(Path(dest), str(dest))
    return {n: s for n, s in shapes.items() if n not in optional}


def write_checkpoint(dest: Path, name: str, seed: int, *, overrides: dict | None = None,
                     cache: Path | None = None) -> dict:
    """Write the synthetic checkpoint of config `name` into `dest`; `overrides` replace config keys (tests shrink
    the sizes with it: then config.json is the published one with those values changed, key order kept)."""
    dest = Path(dest)
    config = write_config(dest, name, overrides)
    family = tiktoken_tokenizer.SYNTHETIC.get(name)
    if family:
        tokenizer = tiktoken_tokenizer.build(dest, family, model_max_length=config["max_position_embeddings"],
                                             cache=cache)
    else:
        tokenizer = phi3_tokenizer.build(dest, model_max_length=config["max_position_embeddings"], cache=cache)
    return {**write_weights(dest, name, seed), "tokenizer": tokenizer}


def write_config(dest: Path, name: str, overrides: dict | None = None) -> dict:
    """config.json (the published bytes, or with `overrides` applied) and generation_config.json; returns the
    config."""
    dest = Path(dest)
    published = published_config(name)
    config = json.loads(published.read_text())
    if overrides:
        config.update(overrides)
        (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    else:
        (dest / "config.json").write_bytes(published.read_bytes())
    family = tiktoken_tokenizer.SYNTHETIC.get(name)
    stop_ids = tiktoken_tokenizer.FAMILIES[family].stop_ids if family else PHI3_STOP_IDS
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": stop_ids,
                  "pad_token_id": config["pad_token_id"]}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return config


def write_weights(dest: Path, name: str, seed: int) -> dict:
    """The shards and their index for `dest`'s config.json, one shard's tensors in memory at a time."""
    from safetensors.torch import save_file

    dest = Path(dest)
    config = json.loads((dest / "config.json").read_text())
    shapes = expected_shapes(dest)
    sizes = [(n, 2 * _numel(s)) for n, s in shapes.items()]  # BF16: 2 bytes an element
    plan = shard_plan(sizes, CONFIGS[name])
    std = float(config["initializer_range"])
    files = [f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors" for k in range(len(plan))]
    weight_map = {}
    for k, (file, names) in enumerate(zip(files, plan)):
        tensors = {n: tensor(n, shapes[n], seed, std) for n in names}
        save_file(tensors, dest / file, metadata={"format": "pt"})
        shard_bytes = sum(t.numel() * 2 for t in tensors.values())
        del tensors
        weight_map.update(dict.fromkeys(names, file))
        print(f"fetch: synthetic {name} seed {seed}: shard {k + 1}/{len(plan)} {file} "
              f"({len(names)} tensors, {shard_bytes / 1e9:.2f} GB)", file=sys.stderr)
    total = sum(size for _, size in sizes)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return {"shards": files, "total_size": total}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def materialize(model: ModelParams, dest: Path) -> dict:
    seed = seed_of(model.revision)
    where = f"synthetic {model.id} seed:{seed}"
    written = write_checkpoint(Path(dest), model.id, seed)
    checkpoint.check(Path(dest), where)  # what every other source must pass
    return {
        "resolved": f"seed:{seed}",
        "synthetic": True,
        "weights": WEIGHTS,
        "config": f"pipeline/sources/configs/{model.id}.json",
        "shards": len(written["shards"]),
        "total_size": written["total_size"],
        "tokenizer": written["tokenizer"],
        "files": sorted(p.name for p in Path(dest).iterdir()),
    }
