"""What a release of an ONNX Runtime GenAI model says about itself: its hub library and tags, the model builder
command that makes the same artifact, and how to run it."""

from __future__ import annotations

from pipeline.backends.common import genai_usage
from pipeline.backends.onnx_genai import KV_SCALES
from pipeline.backends.onnx_genai.builder import builder_options
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant

LIBRARY = "onnx"  # huggingface.co's library name; the runtime goes in the tags
RUNTIME = "onnxruntime-genai"


def tags(variant: OnnxGenaiVariant) -> list[str]:
    return [variant.execution_provider]


def upstream(src: str, dst: str, variant: OnnxGenaiVariant) -> str:
    extra = " ".join(f"{k}={v}" for k, v in builder_options(variant).items())
    cmd = (f"python -m onnxruntime_genai.models.builder -i {src} -o {dst} -p {variant.precision} "
           f"-e {variant.execution_provider} --extra_options {extra}")
    if variant.kv_cache_quant_scheme is not None:
        cmd += (f"\n# {KV_SCALES}: this repository's copy, the KV cache's scales calibrated on the first "
                f"{variant.num_samples} conversations of {variant.calibration} (the pipeline's repository), "
                f"chat-templated, cut to {variant.seq_len} tokens; the builder has no calibration of its own")
    return cmd


def usage(repo: str, variant: OnnxGenaiVariant) -> str:
    pip = "onnxruntime-genai-directml" if variant.execution_provider == "dml" else "onnxruntime-genai"
    return genai_usage(repo, pip)
