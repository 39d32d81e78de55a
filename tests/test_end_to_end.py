"""The README's first command on the embedded default. In a file of its own: at about 20 minutes it is half of the
suite, and under `pytest -n 2 --dist loadfile` (pyproject.toml) one worker runs it while the other runs the rest."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline import devicecost
from tests import project
from tests.test_pipeline import _changed_stages, _ran


@pytest.mark.e2e
def test_default_pipeline_end_to_end(tmp_path):
    """The README's first command on the embedded default, in a fresh copy of the project; the smoke's context runs
    stop at 1,024 tokens (params.yaml's go to 4,096, where the ONNX smokes' prefill is slowest: those four smokes took
    220 s of CI's run), which changes no artifact."""
    proj = project.make(tmp_path)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["smoke"]["context"]["lengths"] = [128, 1024]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = project.aipc(proj, "repro")
    print(run.stdout[-3000:])
    params = yaml.safe_load((proj / "params.yaml").read_text())
    for variant in [name for group in params["variants"].values() for name in group]:
        smoke = json.loads((proj / "metrics" / "smollm2" / variant / "smoke.json").read_text())
        assert smoke["status"] == "passed", (variant, smoke.get("reason"))
        answer = smoke["runs"][0]["prompts"][0]["text"]
        print(f"{variant}: {smoke['runs'][0]['device']}: {answer!r}")
        if variant in ("ov-fp16", "ort-cpu-int4"):
            assert "Paris" in answer, (variant, answer)
        # What it costs on the device: measured where the backend has a context run, and the card says the same.
        context = smoke["context"]
        assert context["measured"] == (not variant.startswith("npu-lib")), (variant, context.get("reason"))
        card = (proj / "releases" / "smollm2" / variant / "README.md").read_text()
        assert all(line in card for line in devicecost.card_lines(context)), variant
        quality = json.loads((proj / "metrics" / "smollm2" / variant / "quality.json").read_text())
        print(f"{variant}: quality {quality['gate']}")
        if quality["family"] == "fp16":
            assert quality["gate"]["cosine"] >= 0.999
        elif quality["family"] == "int4":  # the metrics tell precisions apart
            assert quality["gate"]["cosine"] < 0.999 and quality["gate"]["top1"] < 0.97
    report = json.loads((proj / "reports" / "quality.json").read_text())
    assert report["misses"] == []
    assert _changed_stages(proj) == set()
    assert _ran(project.aipc(proj, "repro").stdout) == []
