"""Where checkpoints come from. Each source module has `materialize(model, dest) -> dict`: it writes the checkpoint
files into `dest` (an empty staging dir) and returns its provenance ({"resolved": ..., "files": [...], ...})."""

from __future__ import annotations

import importlib
from pathlib import Path

from pipeline.params import ModelParams


def materialize(model: ModelParams, dest: Path) -> dict:
    # Imported on use: only the model's own source module (the embedded GGUF reader, the hub client, ...) loads.
    module = importlib.import_module(f"pipeline.sources.{model.source}")
    return module.materialize(model, Path(dest))
