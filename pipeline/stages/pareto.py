"""`aipc pareto`: the INT4 recipes of every DVC experiment (and the workspace), per route, as a Pareto front of
quality (KL to FP32, lower is better) against bytes on disk, and the recipe it picks under a size budget.

Not a stage: it reads what `dvc exp show` shows (dvc.api.exp_show), so it covers every experiment the recipe search
ran (`dvc exp run --queue -S ...`, README "Better INT4 per byte") without running anything. A point is one INT4
variant in one experiment: its params, its quality.json gate and the bytes of its files (export.json). A route is
where the artifact runs: OpenVINO on CPU, OpenVINO on the NPU, ONNX Runtime GenAI per execution provider. The budget
is `--budget-mb`, or `--budget-x` times the bytes of the route's seed recipe (SEEDS: the data-free variants the
project started with), measured in the workspace.
"""

from __future__ import annotations

import re
from collections import defaultdict

SEEDS = ("ov-int4", "ov-int4-npu", "ort-cpu-int4")
# DVC drops the `file:` prefix of a column whose name is unique across files, so params are matched with or without
# it (their key path names the variant), and a metric only with it (gate.kl etc. are in every quality.json).
_PARAM = re.compile(r"^(?:params\.yaml:)?variants\.(?P<backend>[a-z_]+)\.(?P<variant>[^.]+)\.(?P<key>.+)$")
_METRIC = re.compile(r"^metrics/(?P<model>[^/]+)/(?P<variant>[^/]+)/(?P<kind>export|quality|smoke)\.json:(?P<key>.+)$")
SHOWN = {"ratio": "r", "group_size": "g", "num_samples": "n", "block_size": "block", "accuracy_level": "acc"}


def points(rows: list[dict]) -> list[dict]:
    """One point per (experiment, model, INT4 variant) with metrics, from dvc.api.exp_show's rows; a recipe met in
    several experiments (every experiment carries the unchanged variants too) is kept once, where first seen."""
    seen, found = set(), []
    for row in rows:
        if row.get("State") not in (None, "Success") or row.get("typ") == "queued":
            continue
        metrics: dict[tuple, dict] = defaultdict(lambda: {"bytes": 0})
        recipes: dict[str, dict] = defaultdict(dict)
        for column, value in row.items():
            value = _value(value)
            if value is None:
                continue
            if m := _PARAM.match(column):
                recipes[m["variant"]].update({m["key"]: value, "backend": m["backend"]})
                continue
            if not (m := _METRIC.match(column)):
                continue
            point, key = metrics[m["model"], m["variant"]], m["key"]
            if m["kind"] == "export" and key.startswith("export.files."):
                point["bytes"] += value
            elif m["kind"] == "export" and key == "export.calibration.compress_seconds":
                point["compress_seconds"] = value
            elif m["kind"] == "export" and key == "export.calibration.statistics_reused":
                point["statistics_reused"] = value
            elif m["kind"] == "quality" and key.startswith("gate."):
                point[key.removeprefix("gate.")] = value
            elif m["kind"] == "smoke" and key == "decode_tokens_per_s":
                point["tok_s"] = value
        for (model, variant), point in metrics.items():
            recipe = recipes.get(variant, {})
            if "kl" not in point or (recipe.get("weight_format") or recipe.get("precision")) != "int4":
                continue
            key = (model, variant, tuple(sorted(recipe.items())))
            if key in seen:
                continue
            seen.add(key)
            found.append({**point, "model": model, "variant": variant, "recipe": recipe, "route": route(recipe),
                          "experiment": row.get("Experiment") or row.get("rev")})
    return found


def _value(v):
    """A value as exp_show gives it (booleans as 'True'/'False', integers as floats, '!' or None where a row has
    no such column) back as what the JSON held; None for absent."""
    if v in (None, "!", "None", "-"):
        return None
    if v in ("True", "False"):
        return v == "True"
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def route(recipe: dict) -> str:
    if recipe.get("backend") == "openvino":
        return "openvino NPU" if recipe.get("npu") else "openvino CPU"
    return f"{recipe.get('backend')} {recipe.get('execution_provider')}"


def describe(recipe: dict) -> str:
    """A recipe in a few words: its quantization options, without the ones every recipe of a route shares."""
    words = []
    for key, value in sorted(recipe.items()):
        if key in ("backend", "weight_format", "precision", "execution_provider", "npu", "calibration", "seq_len",
                   "from_fp16_ir", "group_size_fallback") or value in (False, None):
            continue
        if key in ("sym", "is_symmetric"):
            words.append("sym" if value else "asym")
        elif value is True:
            words.append(key)
        else:
            words.append(f"{SHOWN.get(key, key)}{'' if key in SHOWN else '='}{value}")
    return " ".join(words) or "defaults"


def front(route_points: list[dict]) -> list[dict]:
    """The points no other point beats on both bytes and KL, smallest first."""
    return sorted((p for p in route_points if not any(
        q["bytes"] <= p["bytes"] and q["kl"] <= p["kl"] and (q["bytes"], q["kl"]) != (p["bytes"], p["kl"])
        for q in route_points)), key=lambda p: p["bytes"])


def stage(params, layout, budget_x: float = 1.05, budget_mb: float | None = None, commits: int = 10,
          rev: str | None = None) -> dict:
    import dvc.api

    # The workspace, the last `commits` commits (from `rev`, default HEAD) and every experiment made from them
    # (`dvc exp show -n`): a search queued before the latest commit still counts. A recipe is shown where it was
    # first seen (newest first).
    rows = dvc.api.exp_show(repo=str(layout.root), revs=rev, num=commits)
    found = points(rows)
    by_route: dict[tuple, list] = defaultdict(list)
    for p in found:
        by_route[p["model"], p["route"]].append(p)
    picks = {}
    for (model, name), route_points in sorted(by_route.items()):
        seed = next((p for p in route_points if p["variant"] in SEEDS and p["experiment"] == "workspace"), None)
        budget = budget_mb * 1e6 if budget_mb else (budget_x * seed["bytes"] if seed else None)
        print(f"\n{model} / {name}: {len(route_points)} recipes"
              + (f"; budget {budget / 1e6:.1f} MB" + ("" if budget_mb else f" ({budget_x} x {seed['variant']})")
                 if budget else ""))
        print(f"  {'':1} {'MB':>7} {'KL':>6} {'top-1':>6} {'ppl x':>6} {'sim':>5} {'tok/s':>6}  "
              "recipe (variant @ experiment)")
        best = front(route_points)
        for p in sorted(route_points, key=lambda p: (p["bytes"], p["kl"])):
            mark = "*" if p in best else " "
            print(f"  {mark} {p['bytes'] / 1e6:7.1f} {p['kl']:6.3f} {p.get('top1', float('nan')):6.3f} "
                  f"{p.get('ppl_ratio', float('nan')):6.3f} {p.get('similarity', float('nan')):5.2f} "
                  f"{p.get('tok_s', float('nan')):6.1f}  "
                  f"{describe(p['recipe'])} "
                  f"({p['variant']} @ {p['experiment']})")
        fits = [p for p in best if budget is None or p["bytes"] <= budget]
        if fits:
            pick = min(fits, key=lambda p: p["kl"])
            picks[f"{model}/{name}"] = {k: pick[k] for k in ("variant", "experiment", "bytes", "kl", "recipe")}
            print(f"  pick: {describe(pick['recipe'])} ({pick['variant']} @ {pick['experiment']}): "
                  f"{pick['bytes'] / 1e6:.1f} MB, KL {pick['kl']:.3f}, top-1 {pick.get('top1', float('nan')):.3f}")
        else:
            print("  pick: none fits the budget")
    print("\n* on the Pareto front (no other recipe is both smaller and lower in KL)")
    return picks
