"""The OpenVINO execution provider backend (the Windows ML route): ONNX Runtime GenAI models that run wholly on Intel's
OpenVINO execution provider, as Windows ML and Foundry Local do on Intel AI PCs. The model is one `EPContext` node
around an OpenVINO IR that the openvino backend built (the variant's `wraps`), plus a genai_config.json whose decoder
asks for the OpenVINO provider.

    params.py    OpenVINOEPVariant, the variant's options
    wrap.py      export: the IR hard-linked, the EPContext graph and genai_config.json written, all read back
    runtime.py   the EP plugin (onnxruntime-ep-openvino) registered; smoke, logits, generate through it
    card.py      hub library, tags, upstream command and usage for the release's model card
"""

import re
from importlib.util import find_spec
from pathlib import Path

from pipeline.backends.common import installed, provided
from pipeline.backends.openvino_ep.params import OpenVINOEPVariant

NAME = "openvino_ep"
Variant = OpenVINOEPVariant
# What its exports import and whose version can change their bytes or whether the EP reads them
# (toolchain/openvino_ep.txt): the EP plugin bundles its own OpenVINO, recorded beside it.
LOCK = ("onnx", "onnxruntime", "onnxruntime-ep-openvino", "onnxruntime-genai", "openvino")


def inputs(variant: OpenVINOEPVariant) -> tuple[str, ...]:
    return (variant.wraps,)  # the OpenVINO IR it wraps


def plugin_openvino() -> str | None:
    """The OpenVINO release the EP plugin bundles ('2026.4.1' from libopenvino.so.2641), or None without it."""
    spec = find_spec("onnxruntime_ep_openvino")
    if spec is None or not spec.submodule_search_locations:
        return None
    for lib in Path(next(iter(spec.submodule_search_locations))).glob("libopenvino.so.*"):
        m = re.fullmatch(r"libopenvino\.so\.(\d{2})(\d)(\d+)", lib.name)
        if m:
            return f"20{m[1]}.{m[2]}.{m[3]}"
    return "unknown (no libopenvino.so.<version> beside the plugin)"


def lock_lines() -> list[str]:
    return [*installed(LOCK), f"# onnxruntime-ep-openvino's own OpenVINO: {plugin_openvino() or 'not installed'}"]


# Where the interface's functions live. Loaded on first use, so that params.py (which needs only Variant) and
# the other backends' stages never import this backend's export and runtime code.
_PROVIDED = {"export": "wrap", "smoke": "runtime",
             "context_cost": "runtime", "logits": "runtime", "generate": "runtime", "card": None}


def __getattr__(name: str):
    return provided(__name__, _PROVIDED, name)
