"""An ONNX Runtime GenAI variant's params (params.yaml `variants: onnx_genai: <name>:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_serializer, model_validator

from pipeline.schema import Strict

# The builder's `algo_config` (onnxruntime-genai 0.18: builders/base.py make_algo_config, quant_config.py
# _LEGACY_ALGO_ALIASES): the weight quantizer (default: MLAS block min-max; rtn; k_quant: llama.cpp's k-quant
# search for each block's scale and zero point) and, after the underscore, which MatMuls go to int8 (last: the
# LM head; mixed: plus llama.cpp's sensitive layers' qkv/v/down projections). Data-free all: the builder has no
# calibration input.
ALGO_CONFIGS = ("default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed")


class OnnxGenaiVariant(Strict):
    """An ONNX Runtime GenAI model made with its model builder."""

    backend: Literal["onnx_genai"] = "onnx_genai"
    precision: Literal["int4", "int8", "fp16", "fp32"]
    execution_provider: Literal["cpu", "dml", "cuda", "webgpu"]
    block_size: Literal[16, 32, 64, 128, 256] = 32  # int4 quantization block (the builder ignores `int4_block_size`)
    is_symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None
    algo_config: Literal[ALGO_CONFIGS] | None = None  # None: not passed (the builder's default)

    @model_validator(mode="after")
    def _k_quant_is_asymmetric(self) -> OnnxGenaiVariant:
        # Measured on the default model: k_quant writes a zero point for every block whatever is_symmetric says
        # (151 of 151 MatMulNBits), so a symmetric k_quant variant would promise what the graph does not hold.
        if (self.algo_config or "").startswith("k_quant") and self.is_symmetric:
            raise ValueError(f"algo_config {self.algo_config} is always asymmetric in the builder (it writes zero "
                             "points regardless): set is_symmetric: false")
        return self

    @model_serializer(mode="wrap")
    def _recorded(self, handler):
        # Recorded only when set, so the records of the variants made before it keep their bytes.
        d = handler(self)
        return d if self.algo_config is not None else {k: v for k, v in d.items() if k != "algo_config"}

    @property
    def family(self) -> str:
        return self.precision
