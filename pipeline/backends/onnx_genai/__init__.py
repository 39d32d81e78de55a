"""The ONNX Runtime GenAI backend: onnxruntime-genai's model builder, onnxruntime-genai at run time.

    params.py    OnnxGenaiVariant, the variant's options
    builder.py   the builder's options and run (export)
    readback.py  the exported graph read back and checked
    runtime.py   smoke, logits, generate (onnxruntime-genai, CPU provider where the variant's is absent)
    card.py      hub library, tags, upstream command and usage for the release's model card
"""

from pipeline.backends.common import installed, provided
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant

NAME = "onnx_genai"
Variant = OnnxGenaiVariant
# What its exports import and whose version can change their bytes (toolchain/onnx_genai.txt).
LOCK = ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "transformers", "torch")


def inputs(variant: OnnxGenaiVariant) -> tuple[str, ...]:
    return ()  # the checkpoint only


def lock_lines() -> list[str]:
    return installed(LOCK)


# Where the interface's functions live. Loaded on first use, so that params.py (which needs only Variant) and
# the other backends' stages never import this backend's export and runtime code.
_PROVIDED = {"export": "builder", "smoke": "runtime",
             "context_cost": "runtime", "logits": "runtime", "generate": "runtime", "card": None}


def __getattr__(name: str):
    return provided(__name__, _PROVIDED, name)
