"""The calibration set of data-aware INT4 (pipeline/calibset.py): the shipped set is disjoint from the eval set,
an overlapping or too small set is refused before any export, and data-aware options without a set are refused."""

from __future__ import annotations

import pytest
import yaml

from pipeline import calibset, params
from pipeline.errors import PipelineError
from tests.conftest import ROOT

CALIBRATION = ROOT / "pipeline/calibration/default.yaml"
EVALSET = ROOT / "pipeline/evalset/default.yaml"


def test_shipped_calibration_set_is_disjoint_from_the_eval_set():
    conversations = calibset.load(CALIBRATION)
    raw = yaml.safe_load(EVALSET.read_text())
    assert calibset.overlap(conversations, raw["prompts"], raw["text"]) == []
    calibset.require_disjoint(CALIBRATION, EVALSET)
    # Enough for the shipped variants' num_samples, and each one a chat: a user turn answered by the assistant.
    assert len(conversations) >= 32
    assert all([m["role"] for m in c[:2]] == ["user", "assistant"] for c in conversations)


def test_overlap_names_a_copied_prompt_and_a_copied_clause():
    prompts = ["What is the capital of France?"]
    text = "The old stone bridge near the mill is sometimes closed for a day or two."
    leak = [[{"role": "user", "content": "what is the capital of france"},
             {"role": "assistant", "content": "They say the bridge near the mill is sometimes closed, sadly."}]]
    found = calibset.overlap(leak, prompts, text)
    assert found[0] == "the eval prompt 'what is the capital of france'"
    assert "'the bridge near the mill is'" not in found  # 'the old stone bridge' differs: no 6-word run there
    assert "'bridge near the mill is sometimes'" in found
    # Five shared words in a row are not an overlap.
    assert calibset.overlap([[{"role": "user", "content": "Is the capital of France big?"}]], [], text) == []


def _params(tmp_path, variant: dict, evalset=EVALSET) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["quality"]["evalset"] = str(evalset)
    raw["variants"]["openvino"] = {"ov-x": {"weight_format": "int4", **variant}}
    raw["variants"]["openvino_ep"] = {}  # its variants wrap the openvino ones replaced here
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_calibration_set_that_overlaps_the_eval_set_stops_check(tmp_path):
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text(yaml.safe_dump({"conversations": [[{"role": "user", "content": "Why is the sky blue?"}, {
        "role": "assistant", "content": "Explain in one sentence why the sky is blue, they asked."}]]}))
    with pytest.raises(PipelineError, match=r"ov-x: .*leaky.yaml overlaps the eval set .*'explain in one sentence "
                                            r"why the'.*inflate the quality gate") as err:
        params.load(_params(tmp_path, {"calibration": str(leaky), "num_samples": 1, "awq": True}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("variant, message", [
    ({"awq": True}, "awq needs a calibration set"),
    ({"scale_estimation": True, "gptq": True}, "scale_estimation, gptq needs a calibration set"),
    ({"sensitivity_metric": "hessian_input_activation"}, "sensitivity_metric hessian_input_activation needs a "
                                                         "calibration set"),
    ({"calibration": str(CALIBRATION), "num_samples": 1000}, "num_samples 1000 but .* holds \\d+ conversations"),
    ({"calibration": str(CALIBRATION), "gptq": True, "lora_correction": True}, "gptq and lora_correction"),
    ({"calibration": str(ROOT / "missing.yaml")}, "missing.yaml: cannot read the calibration set"),
])
def test_data_aware_options_are_validated_before_any_export(tmp_path, variant, message):
    with pytest.raises(PipelineError, match=message):
        params.load(_params(tmp_path, variant))


def test_data_free_variants_record_no_data_aware_keys():
    # Their records (export metrics, provenance.json, model cards) keep the bytes they had before the options; ov-int4
    # records the one runtime setting it asks for (dynamic_quantization_group_size, docs/device-cost.md), ov-int4-npu
    # nothing new.
    p = params.load(ROOT / "params.yaml")
    assert p.variants["ov-int4"].model_dump() == {
        "backend": "openvino", "weight_format": "int4", "sym": True, "group_size": 128, "ratio": 0.6,
        "group_size_fallback": "adjust", "from_fp16_ir": True, "npu": False, "dynamic_quantization_group_size": 128}
    assert p.variants["ov-int4-npu"].model_dump() == {
        "backend": "openvino", "weight_format": "int4", "sym": True, "group_size": -1, "ratio": 1.0,
        "group_size_fallback": "adjust", "from_fp16_ir": True, "npu": True}
    assert "algo_config" not in p.variants["ort-cpu-int4"].model_dump()
    assert p.variants["ov-int4-calib"].model_dump()["calibration"] == "pipeline/calibration/default.yaml"
