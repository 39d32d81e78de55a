"""Stage `<backend>-smoke@<model>-<variant>`: run each artifact with its own runtime and record what ran where.

The metrics JSON has status "passed" or "failed" (a failure always carries its reason); each run says which
device was requested, which actually executed it, and the fallback taken when the hardware is absent.
A failed smoke writes its record and then fails the stage: nothing downstream counts it as a pass.
"""

from __future__ import annotations

import sys

from pipeline import backends, fsutil
from pipeline.errors import PipelineError
from pipeline.layout import SOURCE, Layout
from pipeline.params import Params
from pipeline.record import measured


def stage(params: Params, layout: Layout, model: str, variant_name: str) -> dict:
    variant = params.variants[variant_name]
    artifact = layout.artifact(model, variant_name)
    source = layout.artifact(model, SOURCE)
    fsutil.verify_manifest(artifact)
    with measured(f"{variant.backend}-smoke@{model}-{variant_name}") as rec:
        print(f"[smoke] {model}-{variant_name}: {len(params.smoke.prompts)} prompt(s)", file=sys.stderr)
        rec.update(backends.get(variant.backend).smoke(artifact, variant, params.smoke, source))
        # One scalar for `dvc exp show` and `aipc pareto` (they do not look inside lists): the first run's (the
        # device the artifact is for, or its fallback) mean decode speed over the prompts.
        speeds = [p["tokens_per_s"] for p in ((rec.get("runs") or [{}])[0].get("prompts") or [])
                  if p.get("tokens_per_s")]
        if speeds:
            rec["decode_tokens_per_s"] = round(sum(speeds) / len(speeds), 2)
    fsutil.write_json(layout.metrics(model, variant_name, "smoke"), rec)
    for run_ in rec.get("runs", []):
        where = run_["device"] + (f" (requested {run_['requested']}: {run_['fallback']})" if run_.get("fallback") else "")
        for p in run_.get("prompts", []):
            print(f"[smoke] {model}-{variant_name} on {where}: {p['text']!r}", file=sys.stderr)
    if rec["status"] != "passed":
        raise PipelineError(f"smoke {model}-{variant_name} failed: {rec.get('reason')}")
    return rec
