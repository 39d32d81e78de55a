"""An intel-npu-acceleration-library variant's params (params.yaml `variants: npu_library: <name>:`)."""

from __future__ import annotations

from typing import Literal

from pipeline.schema import Strict


class NpuLibraryVariant(Strict):
    """A model quantized by intel-npu-acceleration-library (legacy upstream), stored as portable safetensors."""

    backend: Literal["npu_library"] = "npu_library"
    dtype: Literal["int4", "int8"]

    @property
    def family(self) -> str:
        return self.dtype
