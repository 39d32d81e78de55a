from pathlib import Path

import pytest
import yaml

from pipeline import params
from pipeline.errors import PipelineError
from tests.conftest import ROOT


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_are_valid():
    p = params.load(ROOT / "params.yaml")
    assert set(p.variants) == {"ov-fp16", "ov-int4", "ov-int4-npu", "ort-cpu-int4", "ort-dml-int4", "ort-dml-fp16",
                               "npu-lib-int4", "npu-lib-int8"}
    int4 = p.variants["ov-int4"]
    assert (int4.group_size, int4.ratio, int4.sym) == (128, 0.6, True)
    npu = p.variants["ov-int4-npu"]
    assert (npu.group_size, npu.ratio, npu.sym, npu.npu) == (-1, 1.0, True, True)


def test_misspelt_variant_key_names_key_and_valid_keys(tmp_path, raw):
    raw["variants"]["ov-int4"]["grup_size"] = 64
    with pytest.raises(PipelineError) as e:
        params.load(_write(tmp_path, raw))
    msg = str(e.value)
    assert "variants.ov-int4.grup_size" in msg and "group_size" in msg and "\n" not in msg


def test_unknown_top_level_key(tmp_path, raw):
    raw["variant"] = {}
    with pytest.raises(PipelineError, match=r"unknown key 'variant' \(valid keys here: models, variants, smoke, quality, native\)"):
        params.load(_write(tmp_path, raw))


def test_misspelt_model_key(tmp_path, raw):
    raw["models"]["smollm2"]["revison"] = "x"
    with pytest.raises(PipelineError, match=r"models.smollm2.revison.*valid keys here: source, id, revision"):
        params.load(_write(tmp_path, raw))


def test_builder_alias_that_upstream_silently_ignores_is_rejected(tmp_path, raw):
    # onnxruntime-genai's builder ignores `int4_block_size` without a word; we refuse it and name the real key.
    raw["variants"]["ort-cpu-int4"]["int4_block_size"] = 64
    with pytest.raises(PipelineError, match="int4_block_size.*block_size"):
        params.load(_write(tmp_path, raw))


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"source": "hub", "id": "microsoft/Phi-3-mini-4k-instruct", "revision": "main"}, "not a 40-hex commit"),
        ({"source": "hub", "id": "microsoft/Phi-3-mini-4k-instruct"}, "need `revision`"),
        ({"source": "gguf", "id": "x"}, "models.smollm2.source"),
    ],
)
def test_model_pins(tmp_path, raw, patch, match):
    raw["models"]["smollm2"] = patch
    with pytest.raises(PipelineError, match=match):
        params.load(_write(tmp_path, raw))


def test_branch_allowed_only_when_asked(tmp_path, raw):
    raw["models"]["phi3"] = {"source": "hub", "id": "microsoft/Phi-3-mini-4k-instruct", "revision": "main",
                             "allow_branch": True}
    assert params.load(_write(tmp_path, raw)).models["phi3"].revision == "main"


@pytest.mark.parametrize("group_size", [0, 100, 8])
def test_group_size_must_be_power_of_two_or_channelwise(tmp_path, raw, group_size):
    raw["variants"]["ov-int4"]["group_size"] = group_size
    with pytest.raises(PipelineError, match="variants.ov-int4.group_size"):
        params.load(_write(tmp_path, raw))


def test_unknown_backend(tmp_path, raw):
    raw["variants"]["ov-fp16"]["backend"] = "tensorrt"
    with pytest.raises(PipelineError, match="variants.ov-fp16"):
        params.load(_write(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        params.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        params.load(bad)
