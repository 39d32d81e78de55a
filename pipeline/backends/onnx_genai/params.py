"""An ONNX Runtime GenAI variant's params (params.yaml `variants: onnx_genai: <name>:`)."""

from __future__ import annotations

from typing import Literal

from pipeline.schema import Strict


class OnnxGenaiVariant(Strict):
    """An ONNX Runtime GenAI model made with its model builder."""

    backend: Literal["onnx_genai"] = "onnx_genai"
    precision: Literal["int4", "int8", "fp16", "fp32"]
    execution_provider: Literal["cpu", "dml", "cuda", "webgpu"]
    block_size: Literal[16, 32, 64, 128, 256] = 32  # int4 quantization block (the builder ignores `int4_block_size`)
    is_symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None

    @property
    def family(self) -> str:
        return self.precision
