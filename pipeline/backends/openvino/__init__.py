"""The OpenVINO backend: optimum-intel's FP16 IR, NNCF weight compression, openvino-genai at run time.

    params.py    OpenVINOVariant, the variant's options
    convert.py   export_ir (the model's FP16 IR, stage `ir`) and export (a variant from it)
    readback.py  the weights' precisions read back from the IR
    npu.py       the NPU pre-flight and compiled blob
    runtime.py   smoke, logits, generate (openvino-genai / an f32 infer request)
    card.py      hub library, tags, upstream command and usage for the release's model card
"""

from pipeline.backends.common import installed, provided
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.layout import IR_FP16

NAME = "openvino"
Variant = OpenVINOVariant
# What its exports import and whose version can change their bytes (toolchain/openvino.txt; openvino-tokenizers
# writes the sentencepiece and tiktoken versions it finds into the tokenizer IRs). The runtimes used by
# smoke/quality are not here: upgrading openvino-genai re-measures, it does not re-export.
LOCK = ("optimum-intel", "optimum", "nncf", "openvino", "openvino-tokenizers", "sentencepiece", "tiktoken", "transformers",
        "torch")


def inputs(variant: OpenVINOVariant) -> tuple[str, ...]:
    return (IR_FP16,)  # every variant is compressed from (or is) the model's FP16 IR, stage `ir`


# A data-aware recipe's weights are computed from activations that the CPU's float32 kernels computed, so another
# CPU (vendor, ISA) writes other bytes: docs/trust.md has what a rebuild with AVX2 kernels changed against AVX-512.
# The IR's graph stays the same (convert.stable_names). The bounds are what `aipc verify` accepts from a rebuild.
MACHINE_DEPENDENT_WHY = "its weights are fitted to activation statistics that the CPU's float32 kernels compute"
BOUND = {"code_share": 1e-3, "kl_shift": 0.005}
# GPTQ feeds each layer's rounding error into the next layers' codes: a last-bit difference moves many codes while
# the model's error stays the same.
BOUND_GPTQ = {"code_share": 0.5, "kl_shift": 0.05}


def machine_dependent(variant: OpenVINOVariant) -> dict | None:
    """The artifact's files whose bytes depend on the CPU that built it, why, and the bound a rebuild stays within;
    None when every file is the same bytes on any x86 CPU."""
    if variant.calibration is None:
        return None
    return {"files": ["openvino_model.bin"], "why": MACHINE_DEPENDENT_WHY,
            "bound": BOUND_GPTQ if variant.gptq else BOUND}


def lock_lines() -> list[str]:
    return installed(LOCK)


# Where the interface's functions live. Loaded on first use, so that params.py (which needs only Variant) and
# the other backends' stages never import this backend's export and runtime code.
_PROVIDED = {"export": "convert", "export_ir": "convert", "smoke": "runtime",
             "context_cost": "runtime", "kv_cache_logits": "runtime", "logits": "runtime",
             "generate": "runtime", "weight_difference": "readback", "card": None}


def __getattr__(name: str):
    return provided(__name__, _PROVIDED, name)
