"""An OpenVINO variant's params (params.yaml `variants: openvino: <name>:`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipeline.schema import Strict


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

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v != -1 and (v < 16 or v & (v - 1)):
            raise ValueError("group_size must be -1 or a power of two >= 16")
        return v

    @property
    def family(self) -> str:
        return self.weight_format
