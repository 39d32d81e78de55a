"""What a release of an intel-npu-acceleration-library artifact says about itself: its library and tags, the call
that quantizes the same way, and how to load it (with this project's loader: the library has no on-disk format of
its own that current torch reloads)."""

from __future__ import annotations

from pipeline.backends.npu_library.params import NpuLibraryVariant

LIBRARY = "intel-npu-acceleration-library"
RUNTIME = "intel-npu-acceleration-library"


def tags(variant: NpuLibraryVariant) -> list[str]:
    return []


def upstream(src: str, dst: str, variant: NpuLibraryVariant) -> str:
    return (f"NPUModelForCausalLM.from_pretrained('{src}', use_cache=True, "
            f"config=CompilerConfig(dtype={variant.dtype}))  # then saved as portable safetensors")


def usage(repo: str, variant: NpuLibraryVariant) -> str:
    # The library pickles whole modules in its own cache; this artifact is plain safetensors that the project's
    # loader (env/worker.py beside this file, inside the library's own environment) rebuilds without re-quantizing.
    return f"""intel-npu-acceleration-library is archived upstream; prefer the OpenVINO NPU route (ov-int4-npu).

```python
# In an environment with intel-npu-acceleration-library 1.4.0 (this project's pipeline/backends/npu_library/env/create.py makes one):
import sys
from pathlib import Path

import huggingface_hub

sys.path.insert(0, "pipeline/backends/npu_library/env")  # this project's loader
from worker import load

model = load(Path(huggingface_hub.snapshot_download("{repo}")))  # rebuilt from safetensors, not re-quantized
```"""
