"""An OpenVINO execution provider variant's params (params.yaml `variants: openvino_ep: <name>:`)."""

from __future__ import annotations

from typing import Literal

from pipeline.schema import Strict


class OpenVINOEPVariant(Strict):
    """An ONNX Runtime GenAI model for the OpenVINO execution provider (Windows ML, Foundry Local): an EPContext
    graph around an OpenVINO IR this pipeline already builds (`wraps`), never a second quantization."""

    backend: Literal["openvino_ep"] = "openvino_ep"
    wraps: str  # the openvino variant whose IR it wraps, built for the same model
    # The OpenVINO device genai_config.json asks for (provider option device_type). A machine without it runs the
    # smoke and quality on the EP's CPU device, and the record says so.
    device: Literal["GPU", "NPU", "CPU"]
    precision: Literal["int4", "int8", "fp16"]  # the wrapped IR's family (params.py checks they agree)

    @property
    def family(self) -> str:
        return self.precision
