"""The intel-npu-acceleration-library backend (legacy upstream: Intel archived the library in favour of OpenVINO
GenAI; the OpenVINO NPU variants are the recommended route).

    params.py    NpuLibraryVariant, the variant's options
    library.py   export, smoke, logits, generate: each a worker process in the library's own environment
    env/         create.py makes that environment (.venv-npu); worker.py runs inside it
    card.py      hub library, tags, upstream call and usage for the release's model card
"""

from pipeline.backends.common import provided
from pipeline.backends.npu_library.params import NpuLibraryVariant

NAME = "npu_library"
Variant = NpuLibraryVariant


def inputs(variant: NpuLibraryVariant) -> tuple[str, ...]:
    return ()  # the checkpoint only


# Where the interface's functions live. Loaded on first use, so that params.py (which needs only Variant) and
# the other backends' stages never import this backend's export and runtime code.
_PROVIDED = {"export": "library", "smoke": "library", "logits": "library", "logits_many": "library",
             "generate": "library", "lock_lines": "library", "card": None}


def __getattr__(name: str):
    return provided(__name__, _PROVIDED, name)
