"""Stage `<backend>-export@<model>-<variant>`: build one artifact from the fetched checkpoint (and the artifacts its
backend's inputs() names: the model's FP16 IR for OpenVINO, the wrapped IR for the OpenVINO EP)."""

from __future__ import annotations

import sys

from pipeline import backends, fsutil
from pipeline.errors import PipelineError
from pipeline.layout import SOURCE, Layout
from pipeline.params import Params
from pipeline.record import measured


def stage(params: Params, layout: Layout, model: str, variant_name: str) -> dict:
    variant = params.variants[variant_name]
    backend = backends.get(variant.backend)
    source = layout.artifact(model, SOURCE)
    fsutil.verify_manifest(source)
    inputs = {name: layout.artifact(model, name) for name in backend.inputs(variant)}
    for path in inputs.values():
        fsutil.verify_manifest(path)
    out = layout.artifact(model, variant_name)
    with measured(f"{variant.backend}-export@{model}-{variant_name}") as rec:
        print(f"[export] {model}-{variant_name} ({variant.backend}) -> {out}", file=sys.stderr)
        rec["variant"] = variant.model_dump()
        with fsutil.staged_dir(out) as tmp:
            try:
                rec["export"] = backend.export(source, variant, tmp, inputs=inputs, smoke=params.smoke)
            except PipelineError as e:  # named by what the user wrote, not by the staging dir being filled
                raise PipelineError(f"export {model}-{variant_name}: {e}") from e
            fsutil.write_manifest(tmp)
    fsutil.write_json(layout.metrics(model, variant_name, "export"), rec)
    return rec
