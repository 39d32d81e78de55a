"""Running an ONNX Runtime GenAI model: the smoke run, teacher-forced logits and greedy answers, all through
onnxruntime-genai. A variant for an execution provider this machine lacks (DirectML on Linux) still runs: on the CPU
execution provider, and the record says so."""

from __future__ import annotations

import functools
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.common import (
    concluded,
    genai_context_cost,
    genai_greedy,
    genai_prompt,
    genai_tokenizer_parity,
    versions,
)
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.backends.onnx_genai.readback import MODEL_ONNX
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.params import ContextParams, SmokeParams

# Execution providers other than CPU: the name a user knows, and onnxruntime-genai's probe for it in this build.
PROVIDERS = {
    "dml": ("DirectML", "is_dml_available"),
    "cuda": ("CUDA", "is_cuda_available"),
    "webgpu": ("WebGPU", "is_webgpu_available"),
}


def _load(artifact: Path, variant: OnnxGenaiVariant):
    """The model on the variant's execution provider if this machine has it, else on the CPU provider; and the
    record of that choice."""
    import onnxruntime_genai as og

    config = og.Config(str(artifact))
    run = {"requested": variant.execution_provider, "device": None, "fallback": None}
    if variant.execution_provider != "cpu":
        name, probe = PROVIDERS[variant.execution_provider]
        if not getattr(og, probe)():
            # The builder wrote this provider into genai_config.json, and the model does not load without it.
            # Cleared, the session gets the CPU provider, which has kernels for the int4/fp16 graphs built for
            # DML (DESIGN.md; fp32-dml does not load). Windows-only wheels carry DirectML (onnxruntime-genai-directml).
            config.clear_providers()
            run["fallback"] = f"{name} unavailable on {platform.system()}: CPU execution provider"
    options = json.loads((Path(artifact) / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    if "intra_op_num_threads" in options:  # the artifact's (or a user's) own count stands
        run["intra_op_num_threads"] = options["intra_op_num_threads"]
    elif variant.execution_provider == "cpu" or run["fallback"]:
        # onnxruntime's default intra-op thread count is its count of physical cores, which on these VMs (the `ht`
        # flag, one thread per core) came out as one: ort-cpu-int4 at Phi-3-mini size decoded 10.4 tokens/s by
        # default and 17.6 with both cores (docs/device-cost.md). The released genai_config.json stays without a
        # count, which the user's machine must choose; the runs here use every core they may.
        threads = len(os.sched_getaffinity(0))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        run["intra_op_num_threads"] = threads
    model = og.Model(config)
    run["device"] = model.device_type
    return model, run


def smoke(artifact: Path, variant: OnnxGenaiVariant, smoke: SmokeParams, source: Path) -> dict:
    """Generate greedily for each chat prompt with onnxruntime-genai and check its tokenizer against the source's.
    Never raises for a failed run: the failure becomes the record's reason."""
    record = {
        "status": "failed",
        "reason": None,
        "tokenizer_parity": None,
        "runs": [],
        "versions": versions("onnxruntime-genai", "onnxruntime"),
    }
    try:
        import onnxruntime_genai as og

        model, run = _load(Path(artifact), variant)
        record["runs"].append(run)
        record["tokenizer_parity"] = genai_tokenizer_parity(model, source, [p.text for p in smoke.prompts])
        tokenizer = og.Tokenizer(model)
        run["prompts"] = [genai_prompt(model, tokenizer, source, p, smoke.max_new_tokens) for p in smoke.prompts]
    except Exception as e:
        return concluded(record, e)
    return concluded(record)


# onnx's TensorProto element types of a KV cache input, by name.
KV_DTYPES = {1: ("float32", 4), 10: ("float16", 2), 16: ("bfloat16", 2), 3: ("int8", 1), 2: ("uint8", 1)}
KV_OPTIONS = ("onnxruntime-genai's model builder stores the cache in int8 with calibrated scales for the CPU and "
              "CUDA providers: a variant with kv_cache_quant_scheme int8_per_channel (a quarter of a float32 cache).")


def _kv_options(variant: OnnxGenaiVariant) -> str:
    if variant.kv_cache_quant_scheme is None:
        return KV_OPTIONS
    return (f"this variant's cache is int8 ({variant.kv_cache_quant_scheme}), its scales calibrated on the first "
            f"{variant.num_samples} conversations of {variant.calibration}; the quality gate's logits go through it.")


def context_cost(artifact: Path, variant: OnnxGenaiVariant, context: ContextParams, lengths: list[int]) -> dict:
    """Time to first token, decode speed and peak RSS at each context length through onnxruntime-genai, on the
    provider smoke() uses; the KV cache's element type read from the graph's inputs."""
    import onnx

    artifact = Path(artifact)
    graph = onnx.load(str(artifact / MODEL_ONNX), load_external_data=False).graph
    kv, kv_bytes = next((KV_DTYPES.get(i.type.tensor_type.elem_type, (str(i.type.tensor_type.elem_type), None))
                         for i in graph.input if i.name.startswith("past_key_values")), ("none", None))
    del graph
    search = json.loads((artifact / "genai_config.json").read_text())["search"]
    model, run = _load(artifact, variant)
    settings = {"provider": run["device"], "intra_op_num_threads": run.get("intra_op_num_threads"),
                "kv_cache_dtype": kv, "past_present_share_buffer": search.get("past_present_share_buffer")}
    cost = genai_context_cost(model, artifact, lengths, context.new_tokens, artifact.name, settings=settings,
                              kv_cache=f"{kv} (the graph's past_key_values inputs)", kv_element_bytes=kv_bytes,
                              kv_cache_options=_kv_options(variant))
    return {**cost, "fallback": run["fallback"]}


def generate(artifact: Path, variant: OnnxGenaiVariant, prompts: Sequence[Sequence[int]], max_new_tokens: int
             ) -> list[list[int]]:
    """Greedy new ids for each tokenized prompt, from onnxruntime-genai on the provider logits() uses."""
    onnx = Path(artifact) / MODEL_ONNX
    model = _model_for_logits(Path(artifact), variant, onnx.stat().st_mtime_ns)
    return [genai_greedy(model, ids, max_new_tokens)[0] for ids in prompts]


@functools.lru_cache(maxsize=1)
def _model_for_logits(artifact: Path, variant: OnnxGenaiVariant, mtime_ns: int):
    """Loaded once per process for the quality stage's several logits() and generate() calls (mtime in the key: a model rewritten
    in place is reloaded)."""
    return _load(artifact, variant)[0]


def logits(artifact: Path, variant: OnnxGenaiVariant, input_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab], float32, from onnxruntime-genai on the same provider the
    smoke run uses."""
    import onnxruntime_genai as og

    onnx = Path(artifact) / MODEL_ONNX
    model = _model_for_logits(Path(artifact), variant, onnx.stat().st_mtime_ns)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(input_ids))
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(input_ids, dtype=np.int32))
    # After append_tokens the prompt pass's "logits" output holds every position ([1, len, vocab]), not just the
    # last: teacher forcing goes through genai itself, with no separate InferenceSession on model.onnx. (A model
    # built with prune_lm_head=true would give only the last position; the builder options above never set it.)
    # With an int8 KV cache, GroupQueryAttention quantizes the keys and values before it attends, in the prompt pass
    # too: these logits are the cache's (default model: fed 64 ids a pass or all at once, the same logits).
    out = np.asarray(generator.get_output("logits"))[0].astype(np.float32)
    if out.shape[0] != len(input_ids):
        raise PipelineError(f"{artifact}: genai returned logits for {out.shape[0]} of {len(input_ids)} positions")
    return out
