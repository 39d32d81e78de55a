"""The `fetch` stage: materialise a model's checkpoint into artifacts/<name>/source, atomically, with provenance
(source.json, layout.SOURCE_JSON) and a sha256 manifest. Later stages read only this directory."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import fsutil, sources
from pipeline.layout import SOURCE, SOURCE_JSON
from pipeline.params import ModelParams
from pipeline.record import measured


def stage(params, layout, model: str) -> dict:
    """`aipc fetch <model>`: artifacts/<model>/source and metrics/<model>/source/fetch.json."""
    with measured(f"fetch@{model}") as rec:
        rec["fetch"] = run(model, params.models[model], layout.artifact(model, SOURCE))
    fsutil.write_json(layout.metrics(model, SOURCE, "fetch"), rec)
    return rec


def run(name: str, model: ModelParams, out: Path) -> dict:
    """Fetch model `name` into `out`; returns what was fetched (JSON-able). Raises PipelineError, leaving no `out`
    or partial directory behind, when the checkpoint can't be obtained or fails its checks."""
    out = Path(out)
    start = time.monotonic()
    with fsutil.staged_dir(out) as tmp:
        got = sources.materialize(model, tmp)
        provenance = {
            "source": model.source,
            "id": model.id,
            "revision": model.revision,
            **got,
        }
        fsutil.write_json(tmp / SOURCE_JSON, provenance)
        files = fsutil.write_manifest(tmp)
        size = sum((tmp / f).stat().st_size for f in files)
    return {
        "name": name,
        **provenance,
        "out": str(out),
        "bytes": size,
        "seconds": round(time.monotonic() - start, 2),
    }
