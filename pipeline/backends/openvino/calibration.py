"""The calibration inputs of data-aware INT4 and NNCF's statistics cache.

Inputs are built for the FP16 IR's own inputs, as optimum-intel's calibration does for a stateful decoder
(input_ids, attention_mask, position_ids, beam_idx; each sample one prefill with the state reset, which NNCF's
engine does for stateful models): each conversation of the calibration set goes through the source's chat template
and tokenizer, cut to `seq_len` tokens. Nothing is downloaded.

NNCF collects activation statistics for every data-aware algorithm it has (AWQ, scale estimation, mixed-precision
sensitivities, LoRA correction) in one pass when `statistics_path` names a directory that does not exist, and loads
them instead of running the model when it does. Those statistics depend only on the FP16 IR, the calibration tokens
and the number of samples, so they are cached under a key of exactly those (plus NNCF's version) and shared by every
variant and every DVC experiment of the model: `$AIPC_STATISTICS_CACHE` or ~/.cache/aipc/nncf-statistics, outside
the workspace because `dvc exp run --queue` runs each experiment in a copy of it. GPTQ needs each layer's inputs
after the previous layers were compressed, so it always runs the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline import calibset
from pipeline.backends.common import ov_feed, source_ids, source_tokenizer
from pipeline.backends.openvino.readback import MODEL_XML
from pipeline.errors import PipelineError
from pipeline.fsutil import MANIFEST, sha256_file

MODEL_BIN = "openvino_model.bin"


def samples(source: Path, variant) -> list[list[int]]:
    """Token ids of the first `num_samples` conversations, chat-templated by the source's tokenizer."""
    conversations = calibset.load(variant.calibration)[: variant.num_samples]
    tok = source_tokenizer(Path(source))
    return [source_ids(source, tok.apply_chat_template(c, tokenize=False))[: variant.seq_len] for c in conversations]


def prefill(ids) -> dict[str, np.ndarray]:
    """One prefill of `ids` from an empty state, as the stateful decoder IR takes it (the KV cache is its state)."""
    return ov_feed(ids)


def inputs(model, ids: list[int]) -> dict[str, np.ndarray]:
    """prefill(ids) for exactly the IR's own inputs; an input it cannot fill fails in one line."""
    known = prefill(ids)
    names = [next(iter(port.get_names())) for port in model.inputs]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PipelineError(f"cannot build calibration inputs for the IR's inputs {', '.join(unknown)} "
                            f"(known: {', '.join(known)})")
    return {name: known[name] for name in names}


def statistics_key(ir_fp16: Path, tokens: list[list[int]]) -> str:
    from importlib.metadata import version

    manifest = ir_fp16 / MANIFEST
    listed = json.loads(manifest.read_text()) if manifest.is_file() else {}
    h = hashlib.sha256()
    for name in (MODEL_XML, MODEL_BIN):
        h.update((listed.get(name) or sha256_file(ir_fp16 / name)).encode())
    h.update(json.dumps(tokens).encode())
    h.update(version("nncf").encode())
    return h.hexdigest()[:32]


def statistics_root() -> Path:
    return Path(os.environ.get("AIPC_STATISTICS_CACHE") or Path.home() / ".cache" / "aipc" / "nncf-statistics")


class StatisticsCache:
    """The directory NNCF reads statistics from (or writes them to, at a staging path renamed into place after a
    successful compression, so a killed run never leaves half a cache entry)."""

    def __init__(self, key: str):
        self.final = statistics_root() / key
        self.reused = self.final.is_dir()
        self.path = self.final if self.reused else self.final.with_name(f".{key}.partial-{os.getpid()}")

    def commit(self) -> None:
        if self.reused or not self.path.is_dir():
            return
        try:
            self.path.rename(self.final)
        except OSError:  # another run cached the same key first: theirs is the same
            shutil.rmtree(self.path, ignore_errors=True)

    def discard(self) -> None:
        if not self.reused:
            shutil.rmtree(self.path, ignore_errors=True)
