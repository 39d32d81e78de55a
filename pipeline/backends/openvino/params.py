"""An OpenVINO variant's params (params.yaml `variants: openvino: <name>:`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from pipeline.schema import Strict


DATA_AWARE = ("awq", "scale_estimation", "gptq", "lora_correction")
_NEW = ("calibration", "num_samples", "seq_len", *DATA_AWARE, "sensitivity_metric", "backup_precision",
        "kv_cache_precision", "dynamic_quantization_group_size")


class OpenVINOVariant(Strict):
    """An OpenVINO IR made with optimum-intel; weight compression by NNCF."""

    backend: Literal["openvino"] = "openvino"
    weight_format: Literal["fp16", "int8", "int4"]
    sym: bool = True
    group_size: int = 128  # -1: one scale per output channel
    ratio: Annotated[float, Field(gt=0, le=1)] = 1.0
    # What NNCF does where a layer's input channels don't divide group_size: error, ignore (leave int8), adjust
    # (largest power of two that divides, >= 32). The groups actually used are recorded in the export metrics.
    group_size_fallback: Literal["error", "ignore", "adjust"] = "adjust"
    # true: compress the model's FP16 IR with NNCF (seconds); false: re-trace the checkpoint with optimum (minutes).
    from_fp16_ir: bool = True
    # Run the smoke test through the NPU static-shape pipeline as well (on CPU when no NPU is present).
    npu: bool = False
    # Data-aware INT4 (NNCF): a calibration set (pipeline/calibration/*.yaml, chat conversations rendered through the
    # model's chat template) whose first `num_samples` conversations, cut to `seq_len` tokens, are fed to the FP16
    # IR. With it, `ratio` < 1 picks the INT4 layers by an activation-based sensitivity metric (NNCF's default:
    # max_activation_variance) instead of the weights' own quantization error.
    calibration: str | None = None
    num_samples: Annotated[int, Field(ge=1)] = 32
    seq_len: Annotated[int, Field(ge=8)] = 256
    awq: bool = False  # activation-aware scaling of salient channels
    scale_estimation: bool = False  # scales that minimise each layer's output error on the calibration activations
    gptq: bool = False  # layer-by-layer error feedback (not with lora_correction)
    lora_correction: bool = False  # low-rank int8 adapters that correct the INT4 error (adds bytes)
    sensitivity_metric: Literal["weight_quantization_error", "hessian_input_activation", "mean_activation_variance",
                                "max_activation_variance", "mean_activation_magnitude"] | None = None
    # The precision of the layers `ratio` leaves out of INT4 (and of embeddings / lm_head); none keeps them FP16.
    backup_precision: Literal["int8_asym", "int8_sym", "none"] = "int8_asym"
    # A runtime setting, not in the IR: the KV cache's element type on CPU (OpenVINO's KV_CACHE_PRECISION; u8 is the
    # CPU plugin's own default on x86). The smoke's context run uses it, the quality stage scores the long sequence
    # through a cache of it, and the card's snippet passes it where it is not the default.
    kv_cache_precision: Literal["u8", "f16", "bf16", "f32"] = "u8"
    # A runtime setting too: the group of activations the CPU plugin quantizes to int8 on the fly for int4/int8
    # weights (OpenVINO's DYNAMIC_QUANTIZATION_GROUP_SIZE; none: the plugin's own default, 32 on x86; 0: off). The
    # smoke's context run and the card's snippet use it; the quality gate scores without it (f32, as the weights
    # are), and bench/device_cost.py --dq scores the gate's numbers with each group beside its speed.
    dynamic_quantization_group_size: int | None = None

    @model_validator(mode="after")
    def _data_aware(self) -> OpenVINOVariant:
        wanted = [k for k in DATA_AWARE if getattr(self, k)]
        if self.sensitivity_metric not in (None, "weight_quantization_error"):
            wanted.append(f"sensitivity_metric {self.sensitivity_metric}")
        if wanted and self.calibration is None:
            raise ValueError(f"{', '.join(wanted)} needs a calibration set: add `calibration: "
                             "pipeline/calibration/default.yaml`")
        if self.calibration is not None and self.weight_format != "int4":
            raise ValueError("calibration applies to weight_format int4 only (NNCF's data-aware methods)")
        if self.gptq and self.lora_correction:
            raise ValueError("gptq and lora_correction cannot be combined (NNCF: select one of them)")
        return self

    @model_serializer(mode="wrap")
    def _recorded(self, handler):
        # The options added after the first releases (data-aware, KV cache) are recorded only where they differ from
        # their defaults, so the records (export metrics, provenance.json, model cards) keep the bytes they had.
        d = handler(self)
        return {k: v for k, v in d.items() if k not in _NEW or v != type(self).model_fields[k].default}

    @field_validator("dynamic_quantization_group_size")
    @classmethod
    def _activation_group(cls, v: int | None) -> int | None:
        if v is not None and v != 0 and (v < 16 or v & (v - 1)):
            raise ValueError("dynamic_quantization_group_size must be 0 (off) or a power of two >= 16")
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and (v < 16 or v & (v - 1)):
            raise ValueError("group_size must be -1 or a power of two >= 16")
        return v

    @property
    def family(self) -> str:
        return self.weight_format
