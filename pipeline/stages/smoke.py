"""Stage `<backend>-smoke@<model>-<variant>`: run each artifact with its own runtime and record what ran where.

The metrics JSON has status "passed" or "failed" (a failure always carries its reason); each run says which
device was requested, which actually executed it, and the fallback taken when the hardware is absent.
A failed smoke writes its record and then fails the stage: nothing downstream counts it as a pass.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from pipeline import backends, devicecost, fsutil
from pipeline.backends.common import one_line
from pipeline.errors import PipelineError
from pipeline.layout import SOURCE, Layout
from pipeline.params import ContextParams, Params, Variant
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
        if rec["status"] == "passed" and params.smoke.context.lengths:
            rec["context"] = context(artifact, variant, params.smoke.context, source)
    fsutil.write_json(layout.metrics(model, variant_name, "smoke"), rec)
    for run_ in rec.get("runs", []):
        where = run_["device"] + (f" (requested {run_['requested']}: {run_['fallback']})" if run_.get("fallback") else "")
        for p in run_.get("prompts", []):
            print(f"[smoke] {model}-{variant_name} on {where}: {p['text']!r}", file=sys.stderr)
    if rec["status"] != "passed":
        raise PipelineError(f"smoke {model}-{variant_name} failed: {rec.get('reason')}")
    return rec


def context(artifact: Path, variant: Variant, ctx: ContextParams, source: Path) -> dict:
    """The context-cost record: the backend's measured points (or why there are none) and what devicecost derives
    from them. Its own failure is recorded, not raised: the artifact ran, the smoke passed."""
    cost_fn = getattr(backends.get(variant.backend), "context_cost", None)
    if cost_fn is None:
        return {"measured": False, "reason": f"the {variant.backend} backend has no context-cost run"}
    config = json.loads((Path(source) / "config.json").read_text())
    max_context = config["max_position_embeddings"]
    # A length past the model's context becomes the longest prompt that leaves room for the new tokens (a 4k model's
    # "4096" is 4079).
    lengths = sorted({min(n, max_context - ctx.new_tokens - 1) for n in ctx.lengths})
    if len(lengths) < 2:
        return {"measured": False,
                "reason": f"fewer than two of {ctx.lengths} fit the model's {max_context}-token context"}
    # Measured before the model loads, so its 1 GB of buffers is gone by then.
    bandwidth = max(devicecost.bandwidth().values())
    try:
        # In a process of its own, so its peak RSS is this runtime's alone, not what the smoke run (or, in
        # bench/device_cost.py, another variant) left mapped and allocated.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            cost = pool.submit(cost_fn, artifact, variant, ctx, lengths).result()
    except Exception as e:
        reason = one_line(e)
        if isinstance(e, BrokenProcessPool):  # its text says only that the process ended
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            reason = ("its process was killed without a Python error (on Linux most likely the kernel's OOM killer: "
                      f"this machine has {memory:.0f} GiB)")
        print(f"[smoke] {Path(artifact).name}: context cost not measured: {reason}", file=sys.stderr)
        return {"measured": False, "reason": reason}
    cost["host"] = devicecost.host()
    cost["derived"] = devicecost.derive(cost, weights=devicecost.weight_bytes(artifact), bandwidth_gb_s=bandwidth,
                                        config=config, budgets_gib=ctx.budgets_gib)
    return cost
