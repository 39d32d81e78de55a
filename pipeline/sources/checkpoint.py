"""Is a materialised checkpoint one that every route converts faithfully? A Phi-3 config, and exactly the tensors
transformers' Phi3ForCausalLM expects for that config: by name, by shape, in a floating-point dtype.

Why: transformers loads a checkpoint whose tensors do not fit its config by initialising the missing ones at random
and carries on, and so does every stage after it: a llama checkpoint relabelled as Phi-3 loses q/k/v and gate/up
(half its weights) and every stage exits 0. Only config.json and the safetensors headers are read and the model is
built on the meta device, so memory does not grow with the checkpoint (this runs on 14B ones).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PipelineError

# Every route (OpenVINO, ONNX Runtime GenAI, the NPU library) supports the Phi-3 family only: the checkpoint must
# declare exactly this, whatever its size or context length.
MODEL_TYPE = "phi3"
ARCHITECTURES = ["Phi3ForCausalLM"]
FLOAT_DTYPES = ("F32", "F16", "BF16")
# The official microsoft/Phi-3* repos point auto_map at their own copy of Phi-3's modelling code. No route runs it
# (trust_remote_code is never set, *.py files are never fetched), so these entries alone are let through; any other
# auto_map entry is custom code the routes would silently replace with stock Phi-3, and is refused.
STOCK_AUTO_MAP = {
    "AutoConfig": "configuration_phi3.Phi3Config",
    "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM",
    # microsoft/Phi-4-mini-instruct's: a tokenizer repo, not code (its own tokenizer.json is what loads)
    "AutoTokenizer": "Xenova/gpt-4o",
}
SHARD_INDEX = "model.safetensors.index.json"
_SHOWN = 3  # names per problem in a message: enough to act on, short enough for one line


def _few(names: list[str]) -> str:
    more = f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def read_config(root: Path, where: str) -> dict:
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise PipelineError(f"{where}: cannot read config.json ({_one_line(e)})") from None
    if not isinstance(config, dict):
        raise PipelineError(f"{where}: config.json is not a JSON object")
    return config


def check_config(config: dict, where: str) -> None:
    """Refuse anything but a Phi-3 causal LM, before transformers gets a chance to map it onto another class."""
    supported = f"the routes support the Phi-3 family only (model_type {MODEL_TYPE!r}, architectures {ARCHITECTURES})"
    if config.get("model_type") != MODEL_TYPE:
        raise PipelineError(f"{where}: config.json has model_type {config.get('model_type')!r}; {supported}")
    if config.get("architectures") != ARCHITECTURES:
        raise PipelineError(f"{where}: config.json has architectures {config.get('architectures')!r}; {supported}")
    custom = _custom_code(config.get("auto_map"))
    if custom:
        raise PipelineError(
            f"{where}: config.json has auto_map entries naming custom code ({_few(custom)}); the routes run "
            "transformers' own Phi-3 only, so that code would be silently ignored: remove the auto_map key"
        )


def _custom_code(auto_map) -> list[str]:
    """The auto_map entries that are not the official Phi-3 / Phi-4-mini repos' own (see STOCK_AUTO_MAP)."""
    if auto_map is None:
        return []
    if not isinstance(auto_map, dict):
        return [repr(auto_map)]
    return sorted(k for k, v in auto_map.items() if STOCK_AUTO_MAP.get(k) != v)


def expected_tensors(root: Path, where: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """What Phi3ForCausalLM built from `root`'s config holds ({name: shape}), and which of those may be absent."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    try:
        phi3 = Phi3Config.from_pretrained(root)
        with torch.device("meta"):  # shapes without storage: a 14B model costs no memory here
            model = Phi3ForCausalLM(phi3)
    except Exception as e:  # whatever transformers rejects, no route can convert
        raise PipelineError(f"{where}: config.json is not a valid Phi-3 config ({_one_line(e)})") from None
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    # Tied embeddings: lm_head shares embed_tokens' weight, so checkpoints usually leave it out.
    optional = {"lm_head.weight"} if phi3.tie_word_embeddings else set()
    return shapes, optional


def _weight_files(root: Path, where: str) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files transformers would load, and the sharded index's weight_map when there is one."""
    if (root / SHARD_INDEX).is_file():
        try:
            weight_map = json.loads((root / SHARD_INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PipelineError(f"{where}: cannot read {SHARD_INDEX} ({_one_line(e)})") from None
        return sorted(set(weight_map.values())), weight_map
    if not (root / "model.safetensors").is_file():
        raise PipelineError(f"{where}: no model.safetensors and no {SHARD_INDEX}; transformers would load no weights")
    return ["model.safetensors"], None


def found_tensors(root: Path, where: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (safetensors dtype, shape)} of the checkpoint's weights, from the file headers only."""
    from safetensors import SafetensorError, safe_open

    files, weight_map = _weight_files(root, where)
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    located: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(root / file, framework="numpy") as f:
                for name in f.keys():
                    if name in located:
                        raise PipelineError(f"{where}: tensor {name} is in both {located[name]} and {file}")
                    s = f.get_slice(name)  # a view on the header: the data is not read
                    found[name] = (s.get_dtype(), tuple(s.get_shape()))
                    located[name] = file
        except (OSError, SafetensorError) as e:
            raise PipelineError(f"{where}/{file}: cannot read the safetensors header ({_one_line(e)})") from None
    if weight_map is not None:
        # The index is what loaders follow to find a tensor: it must say where each one really is.
        disagree = sorted(n for n in weight_map.keys() | located.keys() if weight_map.get(n) != located.get(n))
        if disagree:
            raise PipelineError(f"{where}: {SHARD_INDEX} disagrees with the shards' headers on {_few(disagree)}")
    return found


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def compare(expected: dict[str, tuple[int, ...]], optional: set[str],
            found: dict[str, tuple[str, tuple[int, ...]]]) -> list[str]:
    """What is wrong with `found` against `expected`, one short phrase per kind of problem; [] when nothing is."""
    missing = sorted(expected.keys() - found.keys() - optional)
    unexpected = sorted(found.keys() - expected.keys())
    shapes = [f"{n} {_shape(found[n][1])} (expected {_shape(expected[n])})"
              for n in sorted(found.keys() & expected.keys()) if found[n][1] != expected[n]]
    dtypes = [f"{n} {found[n][0]}" for n in sorted(found) if found[n][0] not in FLOAT_DTYPES]
    problems = []
    if missing:
        problems.append(f"missing tensors, which transformers would initialise at random: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors, not part of Phi3ForCausalLM: {_few(unexpected)}")
    if shapes:
        problems.append(f"tensors whose shape does not match config.json: {_few(shapes)}")
    if dtypes:
        problems.append(f"tensors not in a floating-point dtype ({', '.join(FLOAT_DTYPES)}): {_few(dtypes)}")
    return problems


def check(root: Path, where: str) -> None:
    """Raise a one-line PipelineError naming `where` unless checkpoint directory `root` is a complete Phi-3 causal
    LM in floating point: Phi-3 config, no custom code, every tensor present with its shape, nothing extra."""
    root = Path(root)
    check_config(read_config(root, where), where)
    expected, optional = expected_tensors(root, where)
    problems = compare(expected, optional, found_tensors(root, where))
    if problems:
        raise PipelineError(f"{where}: not a complete Phi-3 checkpoint: {'; '.join(problems)}")
