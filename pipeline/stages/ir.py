"""Stage `ir@<model>`: the model's FP16 OpenVINO IR (optimum-intel), from which the OpenVINO variants are made."""

from __future__ import annotations

import sys

from pipeline import fsutil
from pipeline.backends import openvino
from pipeline.layout import IR_FP16, SOURCE, Layout
from pipeline.params import Params
from pipeline.record import measured


def stage(params: Params, layout: Layout, model: str) -> dict:
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


