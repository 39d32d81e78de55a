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
# What its exports import and whose version can change their bytes (toolchain/openvino.txt). The runtimes used by
# smoke/quality are not here: upgrading openvino-genai re-measures, it does not re-export.
LOCK = ("optimum-intel", "optimum", "nncf", "openvino", "openvino-tokenizers", "sentencepiece", "transformers", "torch")


def inputs(variant: OpenVINOVariant) -> tuple[str, ...]:
    return (IR_FP16,)  # every variant is compressed from (or is) the model's FP16 IR, stage `ir`


def lock_lines() -> list[str]:
    return installed(LOCK)


# Where the interface's functions live. Loaded on first use, so that params.py (which needs only Variant) and
# the other backends' stages never import this backend's export and runtime code.
_PROVIDED = {"export": "convert", "export_ir": "convert", "smoke": "runtime", "logits": "runtime", "generate": "runtime", "card": None}


def __getattr__(name: str):
    return provided(__name__, _PROVIDED, name)
