"""What a release of an OpenVINO IR says about itself: its hub library and tags, the upstream command that makes the
same artifact, and how to run it."""

from __future__ import annotations

from pipeline.backends.openvino.params import OpenVINOVariant

LIBRARY = "openvino"  # huggingface.co's library name (huggingface.js model-libraries)
RUNTIME = "openvino-genai"


def tags(variant: OpenVINOVariant) -> list[str]:
    return ["npu"] if variant.npu else []


def upstream(src: str, dst: str, variant: OpenVINOVariant) -> str:
    flags = [f"--weight-format {variant.weight_format}"]
    if variant.weight_format != "fp16":
        if variant.weight_format == "int4":
            flags += [f"--group-size {variant.group_size}", f"--ratio {variant.ratio}",
                      f"--group-size-fallback {variant.group_size_fallback}"]
        flags.append("--sym" if variant.sym else "")
        flags += _data_aware_flags(variant)
    cmd = f"optimum-cli export openvino --model {src} --task text-generation-with-past {' '.join(f for f in flags if f)} {dst}"
    if variant.weight_format != "fp16" and variant.from_fp16_ir:
        cmd += ("\n# (the pipeline compresses its FP16 IR with nncf.compress_weights instead: same per-layer "
                "precisions, a few codes differ)")
    if variant.calibration is not None:
        cmd += (f"\n# calibration: the first {variant.num_samples} conversations of {variant.calibration} (this "
                f"repository), chat-templated, cut to {variant.seq_len} tokens; optimum-cli's --dataset takes only "
                "named hub datasets, so it cannot reproduce this calibration offline")
    return cmd


def _data_aware_flags(variant: OpenVINOVariant) -> list[str]:
    flags = [f"--{name.replace('_', '-')}" for name in ("awq", "scale_estimation", "gptq", "lora_correction")
             if getattr(variant, name)]
    if variant.sensitivity_metric is not None:
        flags.append(f"--sensitivity-metric {variant.sensitivity_metric}")
    if variant.backup_precision != "int8_asym":
        flags.append(f"--backup-precision {variant.backup_precision}")
    if variant.calibration is not None:
        flags.append(f"--num-samples {variant.num_samples}")
    return flags


def usage(repo: str, variant: OpenVINOVariant) -> str:
    device = "NPU" if variant.npu else "CPU"  # "GPU" for the iGPU
    # The runtime settings that differ from the CPU plugin's defaults (runtime.runtime_settings).
    options = "" if variant.kv_cache_precision == "u8" else f', KV_CACHE_PRECISION="{variant.kv_cache_precision}"'
    if variant.dynamic_quantization_group_size is not None:
        options += f", DYNAMIC_QUANTIZATION_GROUP_SIZE={variant.dynamic_quantization_group_size}"
    return f"""```sh
pip install openvino-genai huggingface_hub
```

```python
import huggingface_hub, openvino_genai

path = huggingface_hub.snapshot_download("{repo}")
pipe = openvino_genai.LLMPipeline(path, "{device}"{options})
print(pipe.generate("What is the capital of France?", max_new_tokens=32))
```"""
