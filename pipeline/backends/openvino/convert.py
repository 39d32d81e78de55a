"""OpenVINO export: optimum-intel traces the checkpoint into an FP16 IR (with tokenizer and detokenizer IRs), NNCF
compresses its weights.

The FP16 IR is made once per model (`export_ir`); every int4/int8 variant is derived from it by NNCF in seconds
(measured on the tiny models: the same per-layer precisions and groups as re-tracing with optimum, logit cosine
0.9999 between the two, 0.6-2 s instead of 5-6 s; DESIGN.md: 15 s vs 35 s on full-width layers). Every export is
read back (readback.py) and fails if the weights on disk are not the precision the variant promises.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.common import files_record, one_line, versions
from pipeline.backends.openvino import calibration, npu
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.backends.openvino.readback import MODEL_XML, weight_precisions
from pipeline.errors import PipelineError
from pipeline.fsutil import MANIFEST
from pipeline.layout import IR_FP16
from pipeline.record import Phases
from pipeline.weights import checkpoint_dtype, load_causal_lm, paging_out

if TYPE_CHECKING:
    from pipeline.params import SmokeParams

TASK = "text-generation-with-past"
MODEL_BIN = "openvino_model.bin"
TOKENIZER_IRS = ("openvino_tokenizer.xml", "openvino_detokenizer.xml")


def export_ir(source: Path, out: Path) -> dict:
    """The checkpoint's FP16 IR plus tokenizer/detokenizer IRs in `out` (an empty staging dir)."""
    from optimum.intel import OVConfig

    start = time.perf_counter()
    phases = Phases("ir")
    _require_disk(source, out)
    # An OVConfig with a dtype also keeps optimum from applying its own int8 default to models over 1B parameters.
    try:
        _export_fp16(Path(source), Path(out), OVConfig(dtype="fp16"), phases)
    except PipelineError:
        raise
    except Exception as e:
        if "iostream error" in str(e):  # OpenVINO's serializer names no cause, and deletes what it wrote
            _require_disk(source, out, cause=one_line(e))
        raise PipelineError(f"optimum-intel could not export {source} to OpenVINO: {one_line(e)}") from e
    _require_tokenizer_irs(Path(out))
    return {
        "files": files_record(out),
        "seconds": round(time.perf_counter() - start, 2),
        "phases": phases.seconds,
        "versions": versions("optimum-intel", "openvino", "openvino-tokenizers", "transformers", "torch"),
    }


def _require_disk(source: Path, out: Path, cause: str = "") -> None:
    """Fail in one line if `out`'s file system has less room than the FP16 IR takes (2 bytes a parameter)."""
    stored = sum(p.stat().st_size for p in Path(source).glob("*.safetensors"))
    need = stored // 2 if checkpoint_dtype(source) == "float32" else stored
    free = shutil.disk_usage(out).free
    if free < need:
        raise PipelineError(f"{Path(out).parent}: disk full: the FP16 IR takes about {need >> 20} MiB, "
                            f"{free >> 20} MiB free on its file system{f' (OpenVINO said {cause})' if cause else ''}; "
                            "nothing was kept")


def export(source: Path, variant: OpenVINOVariant, out: Path, *, inputs: dict[str, Path], smoke: SmokeParams) -> dict:
    """Write the variant's IR into `out` (from the model's FP16 IR, `inputs[IR_FP16]`, or, without it, from a fresh
    one) and return what was done and which weight precisions it holds. NPU
    variants also pass the NPU pre-flight (with the static prompt/response limits of `smoke`) and, where an NPU
    exists, get a compiled blob."""
    out = Path(out)
    ir_fp16 = inputs.get(IR_FP16)
    start = time.perf_counter()
    phases = Phases("export")
    calibrated = None
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
                calibrated = _compress_ir(Path(tmp), variant, out, source, phases)
        else:
            calibrated = _compress_ir(Path(ir_fp16), variant, out, source, phases)
        method = "NNCF compress_weights on the FP16 IR"
    else:
        if variant.calibration is not None:
            raise PipelineError("calibration needs from_fp16_ir: true (NNCF calibrates the FP16 IR)")
        _retrace(source, variant, out)
        method = "optimum-intel export with weight quantization (re-traced from the checkpoint)"
    _require_tokenizer_irs(out)
    with phases("read back"):
        weights = weight_precisions(out / MODEL_XML, variant)
    npu_record = {}
    if variant.npu:
        limits = smoke.npu_max_prompt_len, smoke.npu_min_response_len
        with phases("NPU pre-flight and blob"):
            npu_record["npu_preflight"] = npu.preflight(out, *limits, variant=variant)
            npu_record["npu_blob"] = npu.compile_blob(out, *limits)
    return {
        "variant": variant.model_dump(),
        "method": method,
        "seconds": round(time.perf_counter() - start, 2),
        "phases": phases.seconds,
        "weights": weights,
        **({"calibration": calibrated} if calibrated else {}),
        **npu_record,
        "files": files_record(out),
        "versions": versions("optimum-intel", "nncf", "openvino", "openvino-tokenizers", "transformers"),
    }


def _nncf_options(variant: OpenVINOVariant, dataset=None, statistics_path: Path | None = None) -> dict:
    import nncf

    if variant.weight_format == "int8":
        # As `optimum-cli ... --weight-format int8` does: channel-wise, every layer, so group_size/ratio don't apply.
        mode = nncf.CompressWeightsMode.INT8_SYM if variant.sym else nncf.CompressWeightsMode.INT8_ASYM
        return {"mode": mode, "ratio": 1.0, "group_size": -1}
    mode = nncf.CompressWeightsMode.INT4_SYM if variant.sym else nncf.CompressWeightsMode.INT4_ASYM
    advanced = {"group_size_fallback_mode": nncf.GroupSizeFallbackMode(variant.group_size_fallback)}
    options = {"mode": mode, "ratio": variant.ratio, "group_size": variant.group_size}
    # Passed only where set, so the data-free variants make exactly the call they made before these options.
    if variant.sensitivity_metric is not None:
        options["sensitivity_metric"] = nncf.SensitivityMetric(variant.sensitivity_metric)
    if variant.backup_precision != "int8_asym":
        options["backup_mode"] = nncf.BackupMode(variant.backup_precision)
    if dataset is not None:
        options.update(dataset=dataset, subset_size=variant.num_samples, awq=variant.awq,
                       scale_estimation=variant.scale_estimation, gptq=variant.gptq,
                       lora_correction=variant.lora_correction)
        advanced["statistics_path"] = str(statistics_path)
    options["advanced_parameters"] = nncf.AdvancedCompressionParameters(**advanced)
    return options


def _compress_ir(ir_fp16: Path, variant: OpenVINOVariant, out: Path, source: Path, phases: Phases) -> dict | None:
    """Compress the FP16 IR into `out`; for a data-aware variant, return what the calibration was."""
    with phases("import"):
        import nncf
        import openvino as ov

    with phases("read the FP16 IR"):
        model = ov.Core().read_model(ir_fp16 / MODEL_XML)
    dataset = cache = record = None
    if variant.calibration is not None:
        with phases("calibration inputs"):
            tokens = calibration.samples(source, variant)
            dataset = nncf.Dataset([calibration.inputs(model, ids) for ids in tokens])
        cache = calibration.StatisticsCache(calibration.statistics_key(ir_fp16, tokens))
        cache.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"set": variant.calibration, "samples": len(tokens), "tokens": sum(map(len, tokens)),
                  "statistics": cache.final.name, "statistics_reused": cache.reused}
    start = time.perf_counter()
    try:
        # The FP16 IR is mapped, and NNCF reads each weight once for the int4/int8 it writes: those pages go back.
        with phases("compress"), paging_out(ir_fp16):
            compressed = nncf.compress_weights(model, **_nncf_options(variant, dataset, cache and cache.path))
    except BaseException as e:
        if cache is not None:
            cache.discard()
        if isinstance(e, nncf.InvalidGroupSizeError):
            raise _group_size_error(variant, e) from None
        if isinstance(e, nncf.ParameterNotSupportedError):
            raise PipelineError(f"NNCF refused the options: {one_line(e)}") from None
        raise
    if cache is not None:
        cache.commit()
        record["compress_seconds"] = round(time.perf_counter() - start, 2)
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
    if cache is not None:
        # NNCF records its options in the IR, statistics_path as given: a staging path under the user's home.
        _record_statistics_key(compressed, cache.final.name)
    with phases("save"):
        stable_names(compressed)
        ov.save_model(compressed, out / MODEL_XML, compress_to_fp16=False)
    # Tokenizer IRs, configs, tokenizer files, chat template: everything optimum wrote beside the model.
    for path in ir_fp16.iterdir():
        if path.name not in (MODEL_XML, MODEL_BIN, MANIFEST):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, out / path.name)
    return record


def _record_statistics_key(model, key: str) -> None:
    where = ["nncf", "weight_compression", "advanced_parameters"]
    if model.has_rt_info(where):
        options = model.get_rt_info(where).value
        model.set_rt_info(re.sub(r"'statistics_path': '[^']*'", f"'statistics_path': '{key}'", options), where)


def stable_names(model) -> None:
    """Name every op that OpenVINO named itself (`<type>_<n>`, n from a process-wide counter) by its place in the
    graph instead. n counts every node the process made before, so the IR's bytes depended on the process's history:
    a data-aware export that computed NNCF's statistics wrote other names than one that loaded them from the cache.
    Parameters, results and state keep theirs (runtimes look them up)."""
    keep = {"Parameter", "Result", "ReadValue", "Assign"}
    for i, op in enumerate(model.get_ordered_ops()):
        kind = op.get_type_name()
        if kind not in keep and re.fullmatch(rf"{kind}_\d+", op.get_friendly_name()):
            op.set_friendly_name(f"{kind}_{i}")


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


def _export_fp16(source: Path, out: Path, ov_config, phases: Phases) -> None:
    """What `_optimum_export` does for an FP16 IR, byte for byte, without holding a converted copy of the model.

    main_export's steps for a Phi-3 checkpoint, through optimum-intel's public export_from_model: a 16-bit checkpoint
    is loaded as float16 and traced with the 16-bit patch, any other as stored; the preprocessors and the tokenizer
    IRs as main_export makes them. Its model-size int8 default is skipped because the OVConfig has a dtype.

    Here every checkpoint is read as stored, as copy-on-write views of its mapped shards (pipeline/weights.py), and
    OpenVINO's constants share that memory: file pages the kernel can drop, not the process's own (Phi-3-mini peaks
    at 7.4 GB of mapped checkpoint and 0.8 GB of its own). A bf16 checkpoint is traced in bf16: the IR is then
    main_export's with bf16 where it has f16 (measured on the tiny models: the same XML once those names are
    swapped), so its bf16 weights are rounded to f16 in place in the .bin (_bf16_weights_to_f16) and the XML
    renamed. No float16 copy is made (Phi-3-medium: 28 GB, more than this machine's memory; a Phi-3-mini copy
    peaked at 8.6 GB, transformers' own load at 15.4 GB)."""
    with phases("import"):
        import torch
        from optimum.exporters.openvino import export_from_model
        from optimum.exporters.openvino.__main__ import maybe_convert_tokenizers
        from optimum.exporters.openvino.utils import load_preprocessors

    with phases("load"):
        model, info = load_causal_lm(source, None, label="ir")
        if info.get("missing_keys") or info.get("mismatched_keys"):
            raise PipelineError(f"{source}: the checkpoint does not fill the model (missing or mismatched weights)")
        preprocessors = load_preprocessors(str(source), model_type=model.config.model_type)
        bf16 = model.dtype == torch.bfloat16
        if bf16:
            model.config.dtype = torch.float16  # as main_export's float16 load leaves it in config.json
    with phases(f"trace, convert and save {model.num_parameters() / 1e9:.2f}B parameters"):
        export_from_model(model=model, output=out, task=TASK, ov_config=ov_config, stateful=True,
                          preprocessors=preprocessors, device="cpu", trust_remote_code=False,
                          patch_16bit_model=model.dtype in (torch.float16, torch.bfloat16))
    if bf16:
        with phases("bf16 weights to f16, in place"):
            _bf16_weights_to_f16(out / MODEL_XML)
    with phases("tokenizer IRs"):
        maybe_convert_tokenizers("transformers", out, model, preprocessors, task=TASK)


# Bytes of a constant rounded at a time. Whole constants took 3x their size beside the mapped checkpoint: Phi-4-mini's
# [200064, 3072] tied embedding (1.23 GB) put `ir` at 12.3 GB, 1.61x its FP16 bytes; Phi-3's largest is 0.2 GB.
ROUND_BLOCK = 1 << 26


def _bf16_weights_to_f16(xml: Path) -> None:
    """Round every bf16 constant of the IR to f16 in its .bin (same size: in place, a block of one constant in memory
    at a time) and name it f16 in the XML, as a float16 trace would have written it: rounded by torch, as
    main_export's float16 load rounds them (element by element, so the blocks give the same bytes)."""
    import torch

    text = xml.read_text()
    done = set()  # the serializer stores equal constants once: several layers may name the same bytes
    with open(xml.with_suffix(".bin"), "r+b") as f:
        for offset, size in re.findall(r'<data element_type="bf16" shape="[^"]*" offset="(\d+)" size="(\d+)"', text):
            offset, size = int(offset), int(size)
            if (offset, size) in done:
                continue
            done.add((offset, size))
            for start in range(offset, offset + size, ROUND_BLOCK):
                f.seek(start)
                weights = torch.frombuffer(bytearray(f.read(min(ROUND_BLOCK, offset + size - start))),
                                           dtype=torch.bfloat16)
                f.seek(start)
                f.write(weights.to(torch.float16).numpy().tobytes())
    text = text.replace('element_type="bf16"', 'element_type="f16"').replace('precision="BF16"', 'precision="FP16"')
    if "bf16" in text.lower():
        raise PipelineError(f"{xml}: bf16 left after rounding the weights to f16 (an IR this export does not know)")
    xml.write_text(text)


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


