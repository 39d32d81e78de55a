"""What a release of a model for the OpenVINO execution provider says about itself: its hub library and tags, the
upstream command that makes the same artifact (Olive's OpenVINOEncapsulation pass), and how to run it."""

from __future__ import annotations

from pipeline.backends.common import genai_usage, versions
from pipeline.backends.openvino_ep import plugin_openvino
from pipeline.backends.openvino_ep.params import OpenVINOEPVariant

LIBRARY = "onnx"  # huggingface.co's library name; the runtime and the EP go in the tags
RUNTIME = "onnxruntime-genai"


def tags(variant: OpenVINOEPVariant) -> list[str]:
    return ["openvino-ep", "windows-ml", variant.device.lower()]


def upstream(src: str, dst: str, variant: OpenVINOEPVariant) -> str:
    # Olive 0.13's pass over an OpenVINO IR (here the wrapped variant's, which `src` was converted into).
    config = ('{"input_model": {"type": "OpenVINOModel", "model_path": "' + f"artifacts/<model>/{variant.wraps}"
              + '"}, "passes": {"wrap": {"type": "OpenVINOEncapsulation", "target_device": "'
              + variant.device.lower() + '"}}, "output_dir": "' + dst + '"}')
    return f"olive run --config <(echo '{config}')"


def usage(repo: str, variant: OpenVINOEPVariant) -> str:
    pins = " ".join(f"{name}=={v}" for name, v in versions("onnxruntime-genai", "onnxruntime-ep-openvino").items())
    snippet = genai_usage(repo, pins, imports="onnxruntime_ep_openvino, ", setup=(
        'og.register_execution_provider_library("OpenVINO", onnxruntime_ep_openvino.get_library_path())\n'))
    return f"""Built and checked with {pins.replace(" ", ", ")} (the EP bundles OpenVINO {plugin_openvino()}, which reads this
IR). On Windows 11 with Windows ML (which installs Intel's OpenVINO execution provider on Intel machines) or
Foundry Local, load the folder as an ONNX Runtime GenAI model; genai_config.json asks for the OpenVINO provider on
`{variant.device}`. Anywhere else, with the EP from PyPI (it claims Intel CPUs, GPUs and NPUs only):

{snippet}

To run it on another OpenVINO device than `{variant.device}`, change `device_type` in genai_config.json (CPU, GPU,
NPU)."""
