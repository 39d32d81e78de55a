"""`aipc pareto` on rows shaped as dvc.api.exp_show returns them (checked against DVC 3.67 on the default model:
booleans as 'True'/'False', integers as floats, '!' where an experiment has no such column yet)."""

from __future__ import annotations

from pipeline.stages import pareto


def _row(experiment, variant, recipe, *, kl, mb, top1=0.8):
    m = f"metrics/smollm2/{variant}/"
    row = {"Experiment": experiment, "rev": experiment or "workspace", "typ": "branch_commit", "State": "Success",
           m + "export.json:export.files.openvino_model.bin": mb * 1e6 - 1000.0,
           m + "export.json:export.files.config.json": 1000.0,
           m + "quality.json:gate.kl": kl, m + "quality.json:gate.top1": top1}
    backend = recipe["backend"]
    row.update({f"params.yaml:variants.{backend}.{variant}.{k}": v for k, v in recipe.items() if k != "backend"})
    return row


SEED = {"backend": "openvino", "weight_format": "int4", "group_size": 128.0, "ratio": 0.6, "sym": "True",
        "npu": "False"}


def test_points_front_and_pick():
    rows = [
        _row(None, "ov-int4", SEED, kl=0.31, mb=114.2),
        _row("ov-awq-se", "ov-int4-calib", {**SEED, "awq": "True", "scale_estimation": "True"}, kl=0.11, mb=113.9),
        _row("ov-r1", "ov-int4-calib", {**SEED, "ratio": 1.0, "awq": "True"}, kl=0.40, mb=95.0),
        _row("ov-big", "ov-int4-calib", {**SEED, "ratio": 0.2, "awq": "True"}, kl=0.05, mb=140.0),
        _row("npu", "ov-int4-npu", {**SEED, "group_size": -1.0, "ratio": 1.0, "npu": "True"}, kl=0.74, mb=90.5),
        {"Experiment": "queued", "typ": "queued", "State": "Queued"},
    ]
    rows[1]["params.yaml:variants.openvino.ov-int4-calib.gptq"] = "!"  # absent in that experiment
    del rows[1]["params.yaml:variants.openvino.ov-int4-calib.scale_estimation"]  # unique column: DVC drops the file
    rows[1]["variants.openvino.ov-int4-calib.scale_estimation"] = "True"
    rows[1]["metrics/smollm2/ov-int4-calib/smoke.json:decode_tokens_per_s"] = 41.5
    found = pareto.points(rows)
    assert {p["route"] for p in found} == {"openvino CPU", "openvino NPU"}
    cpu = [p for p in found if p["route"] == "openvino CPU"]
    assert sorted(p["experiment"] for p in pareto.front(cpu)) == ["ov-awq-se", "ov-big", "ov-r1"]  # seed dominated
    awq_se = next(p for p in cpu if p["experiment"] == "ov-awq-se")
    assert awq_se["bytes"] == 113.9e6 and awq_se["recipe"]["sym"] is True and "gptq" not in awq_se["recipe"]
    assert awq_se["tok_s"] == 41.5  # the smoke's decode speed, a column of its own
    assert pareto.describe(awq_se["recipe"]) == "awq g128 r0.6 scale_estimation sym"
    # Under 1.05 x the seed's bytes the 140 MB recipe does not fit: the pick is the best KL that does.
    budget = 1.05 * next(p for p in cpu if p["variant"] == "ov-int4")["bytes"]
    assert min((p for p in pareto.front(cpu) if p["bytes"] <= budget), key=lambda p: p["kl"]) is awq_se
