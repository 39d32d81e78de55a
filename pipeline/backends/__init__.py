"""The backends: one package per runtime family, each owning everything about itself behind the same interface.

A backend package `pipeline/backends/<name>/` exposes:

    NAME, Variant          its name (params.yaml `variants: <name>:`) and its variant's params model, whose
                           `family` (fp16, int8, int4, ...) picks the quality thresholds
    inputs(variant)        the artifacts of the model (names under artifacts/<model>/) its export reads besides the
                           checkpoint: the FP16 IR (stage `ir`), or another variant's artifact that it wraps
    lock_lines()           `name==version` lines of what its exports import (toolchain/<name>.txt)
    export(source, variant, out, *, inputs, smoke) -> dict
        Write the artifact into `out` (`inputs`: name -> directory of each of inputs(variant)) (an empty staging dir; the caller renames it into place) and return a
        JSON-able record of what was done (options, fallbacks taken, weight precisions found on read-back, and
        `files`: relative path -> bytes).
    smoke(artifact, variant, smoke, source) -> dict
        Load the artifact with its own runtime, generate for each chat prompt, check tokenizer parity against the
        source tokenizer, and return the record described in pipeline/stages/smoke.py. Never raises for a failed
        run: a failure is a record with status "failed" and its reason.
    context_cost(artifact, variant, context, lengths) -> dict      (optional)
        For each context length, a prompt of that many ids in one pass and `context.new_tokens` more: time to the
        first new id, decode tokens/s and peak RSS (common.context_points), with the runtime, its settings read
        back from what ran, the KV cache's element size and the runtime's options for a smaller cache; the smoke
        stage adds what pipeline/devicecost.py derives. Absent: the smoke record says it was not measured.
    kv_cache_logits(artifact, variant, input_ids, precision, chunk) -> np.ndarray   (optional)
        logits() with the ids fed `chunk` at a time through a KV cache of `precision` (the quality stage's score of
        a compressed cache, recorded beside the gate).
    logits(artifact, variant, input_ids) -> np.ndarray
        Teacher-forced logits, shape [len(input_ids), vocab], float32, from the artifact's own runtime.
    logits_many(artifact, variant, sequences) -> list[np.ndarray]   (optional)
        logits() of several sequences at once, where the runtime has a fixed cost per call worth sharing.
    generate(artifact, variant, prompts, max_new_tokens) -> list[list[int]]
        Greedy new ids for each tokenized prompt (no chat template applied: the ids are the prompt), from the same
        runtime and settings as logits(); stops at the artifact's eos ids.
    card                   LIBRARY and RUNTIME names, tags(variant), upstream(src, dst, variant) (the upstream
                           command that makes the same artifact) and usage(repo, variant), for the model card
    machine_dependent(variant) -> dict | None                      (optional)
        The artifact's files whose bytes depend on the CPU that built it ({files, why, bound}); None or absent:
        every file is the same bytes on any x86 CPU. The release's provenance carries it, `aipc verify` holds a
        rebuild to it.
    weight_difference(artifact_a, artifact_b) -> dict              (with machine_dependent)
        The share of quantized codes (`codes`) and of float constants (`scales`) that differ between two builds.

Adding a backend is a new package and one line in BACKENDS. Heavy libraries (optimum, nncf, onnxruntime-genai, torch)
are imported inside the functions that use them, so importing a backend is cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = ("openvino", "onnx_genai", "npu_library", "openvino_ep")


def get(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise KeyError(f"no backend {name!r} (backends: {', '.join(BACKENDS)})")
    return importlib.import_module(f"pipeline.backends.{name}")
