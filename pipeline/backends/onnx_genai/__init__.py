"""The ONNX Runtime GenAI backend: onnxruntime-genai's model builder, onnxruntime-genai at run time.

    params.py    OnnxGenaiVariant, the variant's options
    builder.py   the builder's options and run (export)
    kvcache.py   an int8 KV cache's calibrated scales
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
    return ()  # the checkpoint only (and a calibration set, a file in the repository)


WEIGHTS = "model.onnx.data"
KV_SCALES = "kv_cache_scales.json"  # an int8 KV cache's calibrated scales (kvcache.py), as the builder reads them
# An int8 KV cache's scales are the largest activations that the CPU's kernels computed (kvcache.py rounds them up to
# bfloat16: another CPU's last bits move one only across a bfloat16 step); the weights are quantized without data, so
# their codes must not move.
MACHINE_DEPENDENT_WHY = "its KV cache scales are the largest activations that the CPU's float kernels computed"
BOUND = {"code_share": 0.0, "kl_shift": 0.005}


def machine_dependent(variant: OnnxGenaiVariant) -> dict | None:
    """The files whose bytes depend on the CPU that built them, why, and the bound a rebuild stays within (None:
    every file is the same bytes on any x86 CPU)."""
    if variant.kv_cache_quant_scheme is None:
        return None
    return {"files": [WEIGHTS, KV_SCALES], "why": MACHINE_DEPENDENT_WHY, "bound": BOUND}


def lock_lines() -> list[str]:
    return installed(LOCK)


# Where the interface's functions live. Loaded on first use, so that params.py (which needs only Variant) and
# the other backends' stages never import this backend's export and runtime code.
_PROVIDED = {"export": "builder", "smoke": "runtime", "context_cost": "runtime", "logits": "runtime",
             "generate": "runtime", "weight_difference": "readback", "card": None}


def __getattr__(name: str):
    return provided(__name__, _PROVIDED, name)
