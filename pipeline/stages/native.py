"""Stage `build_native@<target>`: onnxruntime + onnxruntime-genai for one execution provider (build_native/)."""

from __future__ import annotations

from build_native import runtimes
from pipeline import fsutil
from pipeline.errors import PipelineError
from pipeline.layout import NATIVE
from pipeline.record import measured


def build(params, layout, target: str) -> dict:
    """`aipc native <target>`: runtime wheels or a source build into artifacts/native/<target>."""
    if target not in params.native:
        raise PipelineError(f"unknown native target {target!r} (params.yaml native: {', '.join(params.native)})")
    with measured(f"build_native@{target}") as rec:
        rec["build"] = runtimes.run(params.native[target], layout.root / "artifacts" / NATIVE / target)
    fsutil.write_json(layout.root / "metrics" / NATIVE / f"{target}.json", rec)
    return rec
