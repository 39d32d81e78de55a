"""Stages `ir@<model>` and `export@<model>-<variant>`: build one artifact from the fetched checkpoint."""

from __future__ import annotations

import sys

from pipeline import backends, fsutil
from pipeline.layout import IR_FP16, SOURCE, Layout
from pipeline.params import Params
from pipeline.record import measured


def run_ir(params: Params, model: str, layout: Layout) -> dict:
    from pipeline.backends import openvino

    source = layout.artifact(model, SOURCE)
    fsutil.verify_manifest(source)
    out = layout.artifact(model, IR_FP16)
    with measured(f"ir@{model}") as rec:
        print(f"[ir] {model}: FP16 OpenVINO IR with optimum-intel -> {out}", file=sys.stderr)
        with fsutil.staged_dir(out) as tmp:
            rec["export"] = openvino.export_ir(source, tmp)
            fsutil.write_manifest(tmp)
    fsutil.write_json(layout.metrics(model, IR_FP16, "export"), rec)
    return rec


def run(params: Params, model: str, variant_name: str, layout: Layout) -> dict:
    variant = params.variants[variant_name]
    source = layout.artifact(model, SOURCE)
    fsutil.verify_manifest(source)
    ir = layout.artifact(model, IR_FP16)
    if variant.backend == "openvino":
        fsutil.verify_manifest(ir)
    out = layout.artifact(model, variant_name)
    with measured(f"export@{model}-{variant_name}") as rec:
        print(f"[export] {model}-{variant_name} ({variant.backend}) -> {out}", file=sys.stderr)
        rec["variant"] = variant.model_dump()
        with fsutil.staged_dir(out) as tmp:
            # The NPU pre-flight checks the smoke stage's static prompt/response limits at export time.
            extra = {"smoke_params": params.smoke} if variant.backend == "openvino" else {}
            rec["export"] = backends.get(variant).export(source, variant, tmp, ir_fp16=ir, **extra)
            fsutil.write_manifest(tmp)
    fsutil.write_json(layout.metrics(model, variant_name, "export"), rec)
    return rec
