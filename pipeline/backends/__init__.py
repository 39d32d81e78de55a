"""One module per runtime family, each with the same small interface:

    export(source: Path, variant, out: Path, *, ir_fp16: Path | None) -> dict
        Write the artifact into `out` (an empty staging dir; the caller renames it into place) and return a
        JSON-able record of what was done (options, fallbacks taken, weight precisions found on read-back).
    smoke(artifact: Path, variant, smoke: SmokeParams, source: Path) -> dict
        Load the artifact with its own runtime, generate for each chat prompt, check tokenizer parity against the
        source tokenizer, and return the record described in pipeline/smoke.py. Never raises for a failed run:
        a failure is a record with status "failed" and its reason.
    logits(artifact: Path, variant, input_ids: Sequence[int]) -> np.ndarray
        Teacher-forced logits, shape [len(input_ids), vocab], float32, from the artifact's own runtime.
    logits_many(artifact: Path, variant, sequences) -> list[np.ndarray]   (optional)
        logits() of several sequences at once, where the runtime has a fixed cost per call worth sharing.
    generate(artifact: Path, variant, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]
        Greedy new ids for each tokenized prompt (no chat template applied: the ids are the prompt), from the same
        runtime and settings as logits(); stops at the artifact's eos ids.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.params import NpuLibraryVariant, OnnxGenaiVariant, OpenVINOVariant

_MODULES = {
    "openvino": "pipeline.backends.openvino",
    "onnx_genai": "pipeline.backends.onnx_genai",
    "npu_library": "pipeline.backends.npu_library",
}


def get(variant: OpenVINOVariant | OnnxGenaiVariant | NpuLibraryVariant) -> ModuleType:
    # Imported on demand: optimum-intel alone costs ~12 s and ~1 GB, which an ORT stage should not pay.
    return importlib.import_module(_MODULES[variant.backend])
