"""OpenVINO route: optimum-intel traces the checkpoint into an FP16 IR (with tokenizer and detokenizer IRs), NNCF
compresses its weights, openvino-genai runs the result.

The FP16 IR is made once per model (`export_ir`); every int4/int8 variant is derived from it by NNCF in seconds
(measured on the tiny models: the same per-layer precisions and groups as re-tracing with optimum, logit cosine
0.9999 between the two, 0.6-2 s instead of 5-6 s; DESIGN.md: 15 s vs 35 s on full-width layers). Every export is
read back and fails if the weights on disk are not the precision the variant promises.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.backends.common import chat_text, concluded, one_line, tokenizer_parity, versions
from pipeline.errors import PipelineError
from pipeline.fsutil import MANIFEST
from pipeline.native import F32
from pipeline.params import OpenVINOVariant, SmokeParams

TASK = "text-generation-with-past"
MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
TOKENIZER_IRS = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")
# Runs GenAI's NPU (static-shape) pipeline on the CPU where no NPU exists. `AUTO:NPU,CPU` would silently run the
# ordinary CPU pipeline instead, and compiling for "NPU" alone fails without the device (DESIGN.md).
NPU_ON_CPU = {"NPUW_DEVICES": "CPU"}
CPU_SMOKE = {"INFERENCE_PRECISION_HINT": "f32"}


def export_ir(source: Path, out: Path) -> dict:
    """The checkpoint's FP16 IR plus tokenizer/detokenizer IRs in `out` (an empty staging dir)."""
    from optimum.intel import OVConfig

    start = time.perf_counter()
    # An OVConfig with a dtype also keeps optimum from applying its own int8 default to models over 1B parameters.
    try:
        _optimum_export(source, out, OVConfig(dtype="fp16"))
    except Exception as e:
        raise PipelineError(f"optimum-intel could not export {source} to OpenVINO: {one_line(e)}") from e
    _require_tokenizer_irs(Path(out))
    return {
        "files": _files(out),
        "seconds": round(time.perf_counter() - start, 2),
        "versions": versions("optimum-intel", "openvino", "openvino-tokenizers", "transformers", "torch"),
    }


def export(
    source: Path, variant: OpenVINOVariant, out: Path, *, ir_fp16: Path | None, smoke_params: SmokeParams | None = None
) -> dict:
    """Write the variant's IR into `out` and return what was done and which weight precisions it holds. NPU
    variants also pass the NPU pre-flight (with the static prompt/response limits of `smoke_params`, else the schema's
    defaults) and, where an NPU exists, get a compiled blob."""
    out = Path(out)
    start = time.perf_counter()
    if variant.weight_format == "fp16":
        if ir_fp16 is None:
            export_ir(source, out)
            method = "optimum-intel export, fp16"
        else:
            shutil.copytree(ir_fp16, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))
            method = "copy of the FP16 IR"
    elif variant.from_fp16_ir:
        if ir_fp16 is None:
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.fp16-") as tmp:
                export_ir(source, Path(tmp))
                _compress_ir(Path(tmp), variant, out)
        else:
            _compress_ir(Path(ir_fp16), variant, out)
        method = "NNCF compress_weights on the FP16 IR"
    else:
        _retrace(source, variant, out)
        method = "optimum-intel export with weight quantization (re-traced from the checkpoint)"
    _require_tokenizer_irs(out)
    weights = weight_precisions(out / MODEL_XML, variant)
    npu = {}
    if variant.npu:
        prompt_len, response_len = _npu_limits(smoke_params)
        npu["npu_preflight"] = npu_preflight(out, prompt_len, response_len)
        npu["npu_blob"] = _npu_blob(out, prompt_len, response_len)
    return {
        "variant": variant.model_dump(),
        "method": method,
        "seconds": round(time.perf_counter() - start, 2),
        "weights": weights,
        **npu,
        "files": _files(out),
        "versions": versions("optimum-intel", "nncf", "openvino", "openvino-tokenizers", "transformers"),
    }


def _nncf_options(variant: OpenVINOVariant) -> dict:
    import nncf

    if variant.weight_format == "int8":
        # As `optimum-cli ... --weight-format int8` does: channel-wise, every layer, so group_size/ratio don't apply.
        mode = nncf.CompressWeightsMode.INT8_SYM if variant.sym else nncf.CompressWeightsMode.INT8_ASYM
        return {"mode": mode, "ratio": 1.0, "group_size": -1}
    mode = nncf.CompressWeightsMode.INT4_SYM if variant.sym else nncf.CompressWeightsMode.INT4_ASYM
    return {
        "mode": mode,
        "ratio": variant.ratio,
        "group_size": variant.group_size,
        "advanced_parameters": nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=nncf.GroupSizeFallbackMode(variant.group_size_fallback)
        ),
    }


def _compress_ir(ir_fp16: Path, variant: OpenVINOVariant, out: Path) -> None:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(ir_fp16 / MODEL_XML)
    try:
        compressed = nncf.compress_weights(model, **_nncf_options(variant))
    except nncf.InvalidGroupSizeError as e:
        raise _group_size_error(variant, e) from None
    # The FP16 IR asks the CPU plugin for an f16 KV cache (runtime_options.KV_CACHE_PRECISION); optimum removes
    # that flag from every weight-compressed model so the plugin picks its own (smaller) KV-cache precision, and an
    # int4 CLI export never has it. Remove it too, so this IR runs like the CLI's.
    if compressed.has_rt_info(["runtime_options", "KV_CACHE_PRECISION"]):
        options = compressed.get_rt_info("runtime_options").value
        options.pop("KV_CACHE_PRECISION")
        compressed.set_rt_info(options, "runtime_options")
    # compress_to_fp16=False, as optimum saves compressed models: the default (True) would only touch the remaining
    # f32 constants, never the int4/int8 weights. The one difference from a CLI int4 export that remains: small
    # non-weight constants (rotary inv_freq) stay f16 as the FP16 IR stored them, where the CLI keeps f32.
    ov.save_model(compressed, out / MODEL_XML, compress_to_fp16=False)
    # Tokenizer IRs, configs, tokenizer files, chat template: everything optimum wrote beside the model.
    for path in ir_fp16.iterdir():
        if path.name not in (MODEL_XML, MODEL_BIN, MANIFEST):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, out / path.name)


def _retrace(source: Path, variant: OpenVINOVariant, out: Path) -> None:
    import nncf
    from optimum.exporters.openvino.__main__ import _main_quantize
    from optimum.intel import OVConfig, OVWeightQuantizationConfig

    int8 = variant.weight_format == "int8"
    # The explicit flags of `optimum-cli export openvino --weight-format int4 --group-size G --ratio R --sym
    # --group-size-fallback F`. Never leave them out: with none given, the CLI picks optimum's built-in per-model
    # recipe (for Phi-3: asym g64 with a wikitext2 dataset it tries to download).
    config = OVWeightQuantizationConfig(
        bits=8 if int8 else 4,
        sym=variant.sym,
        group_size=-1 if int8 else variant.group_size,
        ratio=1.0 if int8 else variant.ratio,
        group_size_fallback=None if int8 else variant.group_size_fallback,
    )
    # The CLI's two steps: main_export traces (float weights, since quantization is deferred when a config is
    # given), then _main_quantize compresses in place. Measured byte-identical to the CLI's files.
    try:
        _optimum_export(source, out, OVConfig(quantization_config=config))
        _main_quantize(
            model_name_or_path=str(source),
            task=TASK,
            library_name="transformers",
            quantization_config=config,
            output=Path(out),
            cache_dir=None,
            trust_remote_code=False,
        )
    except nncf.InvalidGroupSizeError as e:
        raise _group_size_error(variant, e) from None
    except Exception as e:
        raise PipelineError(
            f"optimum-intel could not export {source} as {variant.weight_format}: {one_line(e)}"
        ) from e


def _optimum_export(source: Path, out: Path, ov_config) -> None:
    """Exactly what `optimum-cli export openvino --task text-generation-with-past` passes to main_export
    (optimum/commands/export/openvino.py); the files are byte-identical to the CLI's. Never trust_remote_code:
    Phi-3 is native in transformers, and configs with `auto_map` but no code fail with it."""
    from optimum.exporters.openvino import main_export

    main_export(
        model_name_or_path=str(source),
        output=out,
        task=TASK,
        framework="pt",
        trust_remote_code=False,
        ov_config=ov_config,
        stateful=True,
        convert_tokenizer=True,
        library_name="transformers",
    )


def _group_size_error(variant: OpenVINOVariant, e: Exception) -> PipelineError:
    # NNCF lists every failing node on a line of its own: '"<name>" (channel size: 192)'.
    failed = re.findall(r'"([^"]+)" \(channel size: (\d+)\)', str(e))
    where = f"{len(failed)} layers, e.g. {failed[0][0]} ({failed[0][1]} channels)" if failed else one_line(e)
    return PipelineError(
        f"group size {variant.group_size} does not divide the input channels of {where}; "
        "set group_size_fallback: adjust (or ignore), or another group_size"
    )


def _require_tokenizer_irs(ir: Path) -> None:
    # optimum only logs a warning when tokenizer conversion fails; GenAI cannot load a model dir without them.
    missing = [name for name in TOKENIZER_IRS if not (ir / name).is_file()]
    if missing:
        raise PipelineError(f"{ir}: no {', '.join(missing)} (openvino-tokenizers could not convert the tokenizer)")


# ---- reading the weights back --------------------------------------------------------------------------------


def _trace_constant(node) -> dict | None:
    """Follow a weight input back through NNCF's decompression subgraph (Constant -> Convert -> [Subtract zero
    point] -> Multiply scale -> [Reshape groups] -> Convert) to its Constants; None if anything else feeds it."""
    kind = node.get_type_name()
    if kind == "Constant":
        return {"weight": node, "scale": None, "zero_point": None}
    if kind in ("Convert", "Reshape"):
        return _trace_constant(node.input_value(0).get_node())
    if kind in ("Subtract", "Multiply"):
        a, b = (_trace_constant(node.input_value(i).get_node()) for i in (0, 1))
        if a is None or b is None:
            return None
        # The quantized data is the larger constant; the scale or zero point has one value per group or channel.
        data, other = (a, b) if _size(a["weight"]) >= _size(b["weight"]) else (b, a)
        data["zero_point" if kind == "Subtract" else "scale"] = other["weight"]
        return data
    return None


def _size(constant) -> int:
    return int(np.prod(list(constant.get_output_shape(0))))


def _lm_head(model):
    """Name of the MatMul that produces the logits (NNCF keeps it, like embeddings, at backup precision)."""
    node = model.output("logits").get_node()
    while node.get_type_name() != "MatMul" and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_name()


def _weight_layers(model) -> list[dict]:
    """Every linear layer and embedding whose weight is a constant: name, role, stored type, zero point, group."""
    lm_head = _lm_head(model)
    layers = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        for port in (0, 1) if kind == "MatMul" else (0,):
            traced = _trace_constant(op.input_value(port).get_node())
            # Rank-2 weights only: the rotary embedding's inv_freq MatMul ([1, d, 1]) is not a linear layer.
            if traced is None or len(op.input_value(port).get_partial_shape()) != 2:
                continue
            shape = list(traced["weight"].get_output_shape(0))
            if traced["scale"] is None:
                group = None  # not compressed
            elif len(shape) == 3:
                group = shape[-1]  # [out, groups, group_size]
            else:
                group = -1  # [out, in] with one scale per output channel
            role = "embedding" if kind == "Gather" else "lm_head" if op.get_name() == lm_head else "linear"
            stored = traced["weight"].get_output_element_type(0).get_type_name()
            layers.append({
                "name": op.get_friendly_name(),
                "role": role,
                "type": stored,
                "int4": stored in ("i4", "u4"),
                "zero_point": traced["zero_point"] is not None,
                "group_size": group,
                "in_channels": shape[-1] * (shape[-2] if len(shape) == 3 else 1),
                "params": _size(traced["weight"]),
            })
    return layers


def weight_precisions(model_xml: Path, variant: OpenVINOVariant) -> dict:
    """Read the IR's weights back; raise PipelineError (one line) unless they are what `variant` promises."""
    import openvino as ov

    layers = _weight_layers(ov.Core().read_model(model_xml))
    if not layers:
        raise PipelineError(f"{model_xml}: no linear layers with constant weights found")
    where = f"{Path(model_xml).parent.name}/{Path(model_xml).name}"
    int4 = [lay for lay in layers if lay["int4"]]
    ratio_defining = [lay for lay in layers if lay["role"] == "linear"]
    fallbacks = []  # int4 only

    def fail(problem: str, bad: list[dict]) -> PipelineError:
        return PipelineError(f"{where}: {problem} ({len(bad)} of {len(layers)} layers, e.g. {bad[0]['name']})")

    if variant.weight_format == "fp16":
        bad = [lay for lay in layers if lay["type"] != "f16"]
        if bad:
            found = ", ".join(sorted({lay["type"] for lay in bad}))
            raise fail(f"fp16 variant but weights are {found}, not f16", bad)
    elif variant.weight_format == "int8":
        want = "i8" if variant.sym else "u8"
        bad = [lay for lay in layers if lay["type"] != want or lay["zero_point"] == variant.sym]
        if bad:
            raise fail(f"int8 {'sym' if variant.sym else 'asym'} variant but weights are not all {want}"
                       f"{' without' if variant.sym else ' with'} zero points", bad)
    else:
        want, other = ("i4", "u4") if variant.sym else ("u4", "i4")
        bad = [lay for lay in int4 if lay["type"] == other or lay["zero_point"] == variant.sym]
        if bad:
            found = "u4 with zero points (asymmetric)" if variant.sym else "i4 without zero points (symmetric)"
            raise fail(f"int4 {'sym' if variant.sym else 'asym'} variant but int4 weights are {found}", bad)
        if not int4:
            found = ", ".join(sorted({lay["type"] for lay in layers}))
            raise fail(f"int4 variant but no weight is int4 (found {found})", layers)
        # Layers whose input channels the group doesn't divide took NNCF's fallback: `adjust` gives the largest
        # power of two that divides them (>= 32) or else the backup precision; `ignore` leaves them uncompressed.
        # Recorded with what each got (under ratio < 1 a backup precision may also be the ratio's choice).
        fits = {lay["name"]: variant.group_size == -1 or lay["in_channels"] % variant.group_size == 0 for lay in layers}
        fallbacks = [
            {k: lay[k] for k in ("name", "type", "group_size", "in_channels")}
            for lay in ratio_defining
            if not fits[lay["name"]]
        ]
        ignored = variant.group_size_fallback == "ignore"
        bad = [lay for lay in layers if lay["group_size"] is None and not (ignored and not fits[lay["name"]])]
        if bad:
            raise fail("int4 variant but some weights are not compressed", bad)
        bad = [lay for lay in int4 if fits[lay["name"]] and lay["group_size"] != variant.group_size]
        if bad:
            found = ", ".join(sorted({str(lay["group_size"]) for lay in bad}))
            raise fail(f"int4 group size {found} where {variant.group_size} was asked", bad)
        bad = [lay for lay in ratio_defining if fits[lay["name"]] and not lay["int4"]]
        if variant.ratio == 1.0 and bad:
            raise fail(f"ratio 1.0 but linear layers are {', '.join(sorted({lay['type'] for lay in bad}))}", bad)
    int4_linear = [lay for lay in ratio_defining if lay["int4"]]
    return {
        "layers": len(layers),
        "element_types": dict(sorted(Counter(lay["type"] for lay in layers).items())),
        "zero_points": sum(lay["zero_point"] for lay in layers),
        "group_sizes": dict(sorted(Counter(str(lay["group_size"]) for lay in layers if lay["group_size"]).items())),
        "fallbacks": fallbacks,
        # Of the layers the ratio applies to (all linear layers but embeddings and lm_head); NNCF's ratio counts
        # parameters and stops below it, so on a small model the int4 share can be well under the ratio asked.
        "int4_fraction": round(len(int4_linear) / max(len(ratio_defining), 1), 4),
        "int4_param_fraction": round(
            sum(lay["params"] for lay in int4_linear) / max(sum(lay["params"] for lay in ratio_defining), 1), 4
        ),
    }


# ---- NPU pre-flight --------------------------------------------------------------------------------------------

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


def _npu_limits(smoke: SmokeParams | None) -> tuple[int, int]:
    fields = SmokeParams.model_fields
    if smoke is None:
        return fields["npu_max_prompt_len"].default, fields["npu_min_response_len"].default
    return smoke.npu_max_prompt_len, smoke.npu_min_response_len


def npu_preflight(ir: Path, max_prompt_len: int, min_response_len: int) -> dict:
    """Check an IR dir against what the NPU takes; raise PipelineError (one line, offending layers named) if it
    doesn't, else return the record of what was checked."""
    import openvino as ov

    ir = Path(ir)
    where = f"{ir.name}/{MODEL_XML}"
    layers = _weight_layers(ov.Core().read_model(ir / MODEL_XML))
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
        raise offenders(f"int4 group size {found}", bad)

    config = json.loads((ir / "config.json").read_text()) if (ir / "config.json").is_file() else {}
    max_positions = config.get("max_position_embeddings")
    shapes = npu_static_shapes(max_prompt_len, min_response_len)
    if max_positions is None:
        raise PipelineError(f"NPU pre-flight: {ir.name}/config.json has no max_position_embeddings to check "
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


def _npu_blob(ir: Path, max_prompt_len: int, min_response_len: int) -> dict:
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


# ---- running it ----------------------------------------------------------------------------------------------


def smoke(artifact: Path, variant: OpenVINOVariant, smoke: SmokeParams, source: Path) -> dict:
    """Generate for each chat prompt with openvino-genai (and through the NPU pipeline for NPU variants); check the
    tokenizer IRs against the source tokenizer. Never raises for a failed run: it becomes the record's reason."""
    record = {
        "status": "failed",
        "reason": None,
        "tokenizer_parity": None,
        "chat_template": None,
        "runs": [],
        "versions": versions("openvino", "openvino-genai", "openvino-tokenizers"),
    }
    texts = [p.text for p in smoke.prompts]
    try:
        import openvino as ov
        import openvino_genai

        tokenizer = openvino_genai.Tokenizer(str(artifact))
        record["tokenizer_parity"] = tokenizer_parity(
            source,
            texts,
            encode=lambda text: tokenizer.encode(text, add_special_tokens=False).input_ids.data[0],
            decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False),
        )
        record["chat_template"] = _chat_template_parity(tokenizer, source, texts)
        # f32 execution, the rest runtime defaults (u8 KV cache, int8 activations into compressed weights): that is
        # what an AI PC's client CPU runs, having no bf16. On a CPU with AVX512-BF16/AMX (these build machines) the
        # plugin defaults to bf16, and the embedded 135M model's FP16 IR then answers the capital-of-France prompt
        # with "L'Étoile, la Marseillaise, ..." instead of "The capital of France is Paris." (measured).
        record["runs"].append(_run(artifact, "CPU", "CPU", CPU_SMOKE, None, smoke))
        if variant.npu:
            npu_config = {"MAX_PROMPT_LEN": smoke.npu_max_prompt_len, "MIN_RESPONSE_LEN": smoke.npu_min_response_len}
            if "NPU" in ov.Core().available_devices:
                record["runs"].append(_run(artifact, "NPU", "NPU", npu_config, None, smoke))
            else:
                fallback = "no NPU device: the NPU pipeline ran on CPU (NPUW_DEVICES=CPU)"
                record["runs"].append(_run(artifact, "NPU", "CPU", {**npu_config, **NPU_ON_CPU}, fallback, smoke))
    except Exception as e:
        return concluded(record, e)
    return concluded(record)


def _chat_template_parity(tokenizer, source: Path, prompts: Sequence[str]) -> dict:
    # GenAI renders string prompts with the template stored in the tokenizer IR (optimum may have replaced it by a
    # "simplified" one); the model must see what the source's own template renders.
    for prompt in prompts:
        ours = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        want = chat_text(source, prompt)
        if ours != want:
            return {"status": "failed", "reason": f"chat template renders {prompt!r} as {ours!r}, source as {want!r}"}
    return {"status": "passed", "prompts": len(prompts)}


def _run(artifact: Path, requested: str, device: str, config: dict, fallback: str | None, smoke: SmokeParams) -> dict:
    import openvino_genai

    run = {"requested": requested, "device": device, "fallback": fallback, "config": config, "prompts": []}
    try:
        start = time.perf_counter()
        pipe = openvino_genai.LLMPipeline(str(artifact), requested, **config)
        run["load_s"] = round(time.perf_counter() - start, 2)
        # Start from the artifact's generation_config.json so its stop tokens (eos ids) stay in force.
        generation = pipe.get_generation_config()
        generation.max_new_tokens = smoke.max_new_tokens
        generation.do_sample = False
        for prompt in smoke.prompts:
            # A list gives DecodedResults with perf metrics (a bare string returns just the text). GenAI applies
            # the chat template to string prompts; prompt_tokens shows it did (the templated length).
            result = pipe.generate([prompt.text], generation)
            metrics = result.perf_metrics
            text = result.texts[0]
            run["prompts"].append({
                "prompt": prompt.text,
                "text": text,
                "prompt_tokens": int(metrics.get_num_input_tokens()),
                "new_tokens": int(metrics.get_num_generated_tokens()),
                "ttft_ms": round(float(metrics.get_ttft().mean), 2),
                "tokens_per_s": round(float(metrics.get_throughput().mean), 2),
                "expect": prompt.expect,
                "contains_expect": None if prompt.expect is None else prompt.expect in text,
            })
    except Exception as e:
        run["error"] = one_line(e)
    return run


@functools.lru_cache(maxsize=1)
def _compiled_f32(xml: str, mtime_ns: int):
    """The IR compiled once per process for the quality stage's several logits() calls (keyed on mtime too, so an
    IR rewritten in place is recompiled)."""
    import openvino as ov

    # f32, so the numbers show what the stored weights do and not the CPU plugin's defaults (native.F32).
    return ov.Core().compile_model(xml, "CPU", F32)


def logits(artifact: Path, variant: OpenVINOVariant, input_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab], float32, from one pass of the IR on CPU."""
    xml = Path(artifact) / MODEL_XML
    request = _compiled_f32(str(xml), xml.stat().st_mtime_ns).create_infer_request()
    request.reset_state()  # stateful model: the KV cache lives in the request
    n = len(input_ids)
    outputs = request.infer({
        "input_ids": np.asarray([input_ids], dtype=np.int64),
        "attention_mask": np.ones((1, n), dtype=np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
        "beam_idx": np.zeros(1, dtype=np.int32),
    })
    return np.asarray(outputs["logits"][0], dtype=np.float32)


def generate(artifact: Path, variant: OpenVINOVariant, prompts: Sequence[Sequence[int]], max_new_tokens: int
             ) -> list[list[int]]:
    """Greedy new ids for each tokenized prompt, from openvino-genai on CPU in f32 (as logits()); stops at the
    artifact's eos ids."""
    import openvino as ov
    import openvino_genai

    pipe = openvino_genai.LLMPipeline(str(artifact), "CPU", **F32)
    config = pipe.get_generation_config()  # the artifact's own, so its stop ids stay in force
    config.max_new_tokens = max_new_tokens
    config.do_sample = False
    # Token ids in, token ids out: no chat template and no tokenizer IR between the reference's prompt and the model.
    return [[int(t) for t in pipe.generate(ov.Tensor(np.asarray([ids], dtype=np.int64)), config).tokens[0]]
            for ids in prompts]


# ---- small helpers -------------------------------------------------------------------------------------------


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())
