"""An ONNX Runtime GenAI variant's params (params.yaml `variants: onnx_genai: <name>:`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_serializer, model_validator

from pipeline.schema import Strict

# The builder's `algo_config` (onnxruntime-genai 0.18: builders/base.py make_algo_config, quant_config.py
# _LEGACY_ALGO_ALIASES): the weight quantizer (default: MLAS block min-max; rtn; k_quant: llama.cpp's k-quant
# search for each block's scale and zero point) and, after the underscore, which MatMuls go to int8 (last: the
# LM head; mixed: plus llama.cpp's sensitive layers' qkv/v/down projections). Data-free all: the builder has no
# calibration input.
ALGO_CONFIGS = ("default", "rtn", "k_quant", "rtn_last", "k_quant_last", "k_quant_mixed")
# The KV cache in int8 (the builder's kv_cache_quant_scheme; GroupQueryAttention quantizes each key and value as it
# is written and reads the cache back through the same scales): one scale per layer per (kv head, channel), or one
# per layer. The builder writes it for the CPU and CUDA providers only.
KV_CACHE_SCHEMES = ("int8_per_channel", "int8_per_tensor")
KV_CACHE_PROVIDERS = ("cpu", "cuda")
# Added after the first releases: recorded only where set, so the records made before them keep their bytes.
_NEW = ("algo_config", "kv_cache_quant_scheme", "calibration", "num_samples", "seq_len")


class OnnxGenaiVariant(Strict):
    """An ONNX Runtime GenAI model made with its model builder."""

    backend: Literal["onnx_genai"] = "onnx_genai"
    precision: Literal["int4", "int8", "fp16", "fp32"]
    execution_provider: Literal["cpu", "dml", "cuda", "webgpu"]
    block_size: Literal[16, 32, 64, 128, 256] = 32  # int4 quantization block (the builder ignores `int4_block_size`)
    is_symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None
    algo_config: Literal[ALGO_CONFIGS] | None = None  # None: not passed (the builder's default)
    # None: the cache in the model's io dtype (float32 on CPU, float16 for DirectML). Its scales are calibrated: the
    # largest key and value per channel over the first `num_samples` conversations of `calibration` (cut to `seq_len`
    # tokens) through the source checkpoint in PyTorch (kvcache.py).
    kv_cache_quant_scheme: Literal[KV_CACHE_SCHEMES] | None = None
    calibration: str | None = None
    num_samples: Annotated[int, Field(ge=1)] = 32
    seq_len: Annotated[int, Field(ge=8)] = 256

    @model_validator(mode="after")
    def _k_quant_is_asymmetric(self) -> OnnxGenaiVariant:
        # Measured on the default model: k_quant writes a zero point for every block whatever is_symmetric says
        # (151 of 151 MatMulNBits), so a symmetric k_quant variant would promise what the graph does not hold.
        if (self.algo_config or "").startswith("k_quant") and self.is_symmetric:
            raise ValueError(f"algo_config {self.algo_config} is always asymmetric in the builder (it writes zero "
                             "points regardless): set is_symmetric: false")
        return self

    @model_validator(mode="after")
    def _kv_cache(self) -> OnnxGenaiVariant:
        if self.kv_cache_quant_scheme is None:
            if self.calibration is not None:
                raise ValueError("calibration is read only for kv_cache_quant_scheme (the KV cache's scales): set "
                                 "one, or drop calibration")
            return self
        if self.execution_provider not in KV_CACHE_PROVIDERS:
            raise ValueError(f"kv_cache_quant_scheme {self.kv_cache_quant_scheme}: the builder quantizes the KV cache "
                             f"for the {' and '.join(KV_CACHE_PROVIDERS)} execution providers only, not "
                             f"{self.execution_provider}")
        if self.calibration is None:
            raise ValueError(f"kv_cache_quant_scheme {self.kv_cache_quant_scheme} needs a calibration set for its "
                             "scales: add `calibration: pipeline/calibration/default.yaml`")
        return self

    @model_serializer(mode="wrap")
    def _recorded(self, handler):
        d = handler(self)
        return {k: v for k, v in d.items() if k not in _NEW or v != type(self).model_fields[k].default}

    @property
    def family(self) -> str:
        return self.precision
