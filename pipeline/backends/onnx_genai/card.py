"""What a release of an ONNX Runtime GenAI model says about itself: its hub library and tags, the model builder
command that makes the same artifact, and how to run it."""

from __future__ import annotations

from pipeline.backends.common import genai_usage
from pipeline.backends.onnx_genai.builder import builder_options
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant

LIBRARY = "onnx"  # huggingface.co's library name; the runtime goes in the tags
RUNTIME = "onnxruntime-genai"


def tags(variant: OnnxGenaiVariant) -> list[str]:
    return [variant.execution_provider]


def upstream(src: str, dst: str, variant: OnnxGenaiVariant) -> str:
    extra = " ".join(f"{k}={v}" for k, v in builder_options(variant).items())
    return (f"python -m onnxruntime_genai.models.builder -i {src} -o {dst} -p {variant.precision} "
            f"-e {variant.execution_provider} --extra_options {extra}")


def usage(repo: str, variant: OnnxGenaiVariant) -> str:
    pip = "onnxruntime-genai-directml" if variant.execution_provider == "dml" else "onnxruntime-genai"
    return genai_usage(repo, pip)
