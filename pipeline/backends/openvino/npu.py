"""The NPU pre-flight (an IR the NPU cannot take fails on the build machine, not on the laptop) and, where an NPU
exists, the compiled blob."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

from pipeline.backends.common import one_line
from pipeline.backends.openvino.readback import MODEL_XML, weight_layers
from pipeline.errors import PipelineError

# What the NPU takes, checked on the build machine so an IR fails here and not on the laptop. Weights: symmetric INT4
# (i4, no zero points) on every linear layer, one scale per output channel or groups of 128 that divide the input
# channels (OpenVINO's NPU guide: `--sym --ratio 1.0 --group-size -1` or `--group-size 128`); embeddings and lm_head
# may stay at NNCF's int8 backup precision.
NPU_GROUP_SIZES = (-1, 128)
# The static shapes NPUW builds from MAX_PROMPT_LEN / MIN_RESPONSE_LEN (openvino src/plugins/intel_npu/src/plugin/
# npuw/llm_compiled_model.cpp): each is rounded up to a multiple of 64, the KV cache holds their sum; with chunked
# prefill (NPUW_LLM_PREFILL_HINT=DYNAMIC) a prompt longer than the chunk is rounded up to a multiple of the chunk.
NPU_ALIGN = 64
NPU_PREFILL_CHUNK = 1024  # NPUW_LLM_PREFILL_CHUNK_SIZE default
NPU_SHOWN = 3  # offending layers named in the one-line message


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def npu_static_shapes(prompt_len: int, response_len: int) -> dict:
    """The prompt and KV-cache lengths the NPU pipeline compiles for these limits (the larger of the static and
    the chunked-prefill layout, since which one applies depends on the plugin's version and hints)."""
    prompt = _align(prompt_len, NPU_ALIGN)
    if prompt > NPU_PREFILL_CHUNK:
        prompt = _align(prompt, NPU_PREFILL_CHUNK)
    return {"prompt": prompt, "kv_cache": prompt + _align(response_len, NPU_ALIGN)}


def preflight(ir: Path, max_prompt_len: int, min_response_len: int, *, variant=None) -> dict:
    """Check an IR dir against what the NPU takes; raise PipelineError (one line, offending layers named) if it
    doesn't, else return the record of what was checked. With `variant` (an export's own check), the message names
    what the variant asked for rather than the staging dir being written."""
    import openvino as ov

    ir = Path(ir)
    where = "the exported IR" if variant is not None else f"{ir.name}/{MODEL_XML}"
    layers = weight_layers(ov.Core().read_model(ir / MODEL_XML))
    linear = [lay for lay in layers if lay["role"] == "linear"]
    if not linear:
        raise PipelineError(f"NPU pre-flight: {where}: no linear layers with constant weights found")

    def offenders(problem: str, bad: list[dict]) -> PipelineError:
        names = ", ".join(lay["name"] for lay in bad[:NPU_SHOWN]) + (", ..." if len(bad) > NPU_SHOWN else "")
        return PipelineError(
            f"NPU pre-flight: {where}: {problem} in {len(bad)} of {len(linear)} linear layers ({names}); "
            "the NPU takes symmetric INT4 (--sym --ratio 1.0, --group-size -1 or 128)"
        )

    bad = [lay for lay in linear if not lay["int4"]]
    if bad:
        found = ", ".join(sorted({lay["type"] for lay in bad}))
        raise offenders(f"weights are {found}, not int4", bad)
    bad = [lay for lay in linear if lay["type"] != "i4" or lay["zero_point"]]
    if bad:
        raise offenders("int4 weights are asymmetric (u4 with zero points)", bad)
    bad = [
        lay for lay in linear
        if lay["group_size"] not in NPU_GROUP_SIZES or (lay["group_size"] > 0 and lay["in_channels"] % lay["group_size"])
    ]
    if bad:
        found = ", ".join(sorted({f"{lay['group_size']} on {lay['in_channels']} channels" for lay in bad}))
        asked = (f" (group_size {variant.group_size} was asked; group_size_fallback {variant.group_size_fallback} "
                 "chose these where it does not divide the channels)") if variant is not None else ""
        raise offenders(f"int4 group size {found}{asked}", bad)

    config = json.loads((ir / "config.json").read_text()) if (ir / "config.json").is_file() else {}
    max_positions = config.get("max_position_embeddings")
    shapes = npu_static_shapes(max_prompt_len, min_response_len)
    if max_positions is None:
        raise PipelineError(f"NPU pre-flight: {where}: config.json has no max_position_embeddings to check "
                            "smoke.npu_max_prompt_len against")
    if shapes["kv_cache"] > max_positions:
        raise PipelineError(
            f"NPU pre-flight: smoke.npu_max_prompt_len {max_prompt_len} + npu_min_response_len {min_response_len} "
            f"make a {shapes['kv_cache']}-token static KV cache (each rounded up to a multiple of {NPU_ALIGN}"
            f"{f', the prompt to {NPU_PREFILL_CHUNK}' if shapes['prompt'] > NPU_PREFILL_CHUNK else ''}), beyond "
            f"the model's max_position_embeddings {max_positions}"
        )
    return {
        "status": "passed",
        "linear_layers": len(linear),
        "group_sizes": dict(sorted(Counter(str(lay["group_size"]) for lay in linear).items())),
        "other_weights": {lay["role"]: lay["type"] for lay in layers if lay["role"] != "linear"},
        "max_prompt_len": max_prompt_len,
        "min_response_len": min_response_len,
        "static_prompt_len": shapes["prompt"],
        "static_kv_cache_len": shapes["kv_cache"],
        "max_position_embeddings": max_positions,
    }


NPU_BLOB_DIR = "npu_blob"


def compile_blob(ir: Path, max_prompt_len: int, min_response_len: int) -> dict:
    """Compile the IR for the NPU and store the blob under npu_blob/<driver version>/, where an NPU exists."""
    import openvino as ov

    core = ov.Core()
    if "NPU" not in core.available_devices:
        return {
            "status": "skipped",
            "reason": "no NPU device on the build machine: no blob; the smoke stage runs the NPU pipeline on CPU "
                      "(NPUW_DEVICES=CPU)",
        }
    # UNTESTED HERE: no build machine of this project has an NPU. Written after openvino-genai's NPU docs
    # (EXPORT_BLOB / BLOB_PATH; a blob is only valid for the driver and compiler that made it, hence the key).
    import openvino_genai

    driver = str(core.get_property("NPU", "NPU_DRIVER_VERSION"))
    compiler = str(core.get_property("NPU", "NPU_COMPILER_VERSION"))
    key = re.sub(r"[^A-Za-z0-9._-]", "_", driver) or "unknown"
    blob = Path(ir) / NPU_BLOB_DIR / key / "openvino_model.blob"
    blob.parent.mkdir(parents=True, exist_ok=True)
    config = {"MAX_PROMPT_LEN": max_prompt_len, "MIN_RESPONSE_LEN": min_response_len}
    try:
        start = time.perf_counter()
        openvino_genai.LLMPipeline(str(ir), "NPU", **config, EXPORT_BLOB=True, BLOB_PATH=str(blob))
    except Exception as e:
        raise PipelineError(f"NPU compile of {Path(ir).name} failed (driver {driver}): {one_line(e)}") from e
    (blob.parent / "npu_blob.json").write_text(
        json.dumps({"driver": driver, "compiler": compiler, "config": config}, indent=2) + "\n"
    )
    return {
        "status": "compiled",
        "untested": "code path never run on the project's machines (no NPU)",
        "driver": driver,
        "compiler": compiler,
        "path": blob.relative_to(ir).as_posix(),
        "seconds": round(time.perf_counter() - start, 2),
        "config": config,
    }
