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
    assert set(p.variants) == {"ov-fp16", "ov-int4", "ov-int4-npu", "ov-int4-calib", "ov-int4-npu-calib",
                               "ort-cpu-int4", "ort-cpu-int4-kv8", "ort-dml-int4", "ort-dml-fp16", "npu-lib-int4", "npu-lib-int8",
                               "ovep-int4-gpu", "ovep-int4-npu"}
    int4 = p.variants["ov-int4"]
    assert (int4.group_size, int4.ratio, int4.sym) == (128, 0.6, True)
    npu = p.variants["ov-int4-npu"]
    assert (npu.group_size, npu.ratio, npu.sym, npu.npu) == (-1, 1.0, True, True)


def test_misspelt_variant_key_names_key_and_closest_valid_key(tmp_path, raw):
    raw["variants"]["openvino"]["ov-int4"]["grup_size"] = 64
    with pytest.raises(PipelineError) as e:
        params.load(_write(tmp_path, raw))
    assert str(e.value) == (
        "params.yaml: variants.openvino.ov-int4.grup_size: unknown key; did you mean 'group_size'? (valid keys "
        "here: weight_format, sym, group_size, ratio, group_size_fallback, from_fp16_ir, npu, calibration, "
        "num_samples, seq_len, awq, scale_estimation, gptq, lora_correction, sensitivity_metric, backup_precision, "
        "kv_cache_precision, dynamic_quantization_group_size)")


def test_misspelt_top_level_key_is_named_not_reported_missing(tmp_path, raw):
    raw["varaints"] = raw.pop("variants")
    with pytest.raises(PipelineError, match=r"^params.yaml: varaints: unknown key; did you mean 'variants'\? "
                                            r"\(valid keys here: models, variants, smoke, quality, native\)$"):
        params.load(_write(tmp_path, raw))


def test_misspelt_required_variant_key_is_named(tmp_path, raw):
    raw["variants"]["onnx_genai"]["ort-cpu-int4"]["precison"] = raw["variants"]["onnx_genai"]["ort-cpu-int4"].pop(
        "precision")
    with pytest.raises(PipelineError, match=r"variants.onnx_genai.ort-cpu-int4.precison: unknown key; did you mean "
                                            r"'precision'\?"):
        params.load(_write(tmp_path, raw))


def test_misspelt_model_key(tmp_path, raw):
    raw["models"]["smollm2"]["revison"] = "x"
    with pytest.raises(PipelineError, match=r"models.smollm2.revison: unknown key; did you mean 'revision'\?.*"
                                            r"valid keys here: source, id, revision"):
        params.load(_write(tmp_path, raw))


def test_builder_alias_that_upstream_silently_ignores_is_rejected(tmp_path, raw):
    # onnxruntime-genai's builder ignores `int4_block_size` without a word; we refuse it and name the real key.
    raw["variants"]["onnx_genai"]["ort-cpu-int4"]["int4_block_size"] = 64
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
    raw["variants"]["openvino"]["ov-int4"]["group_size"] = group_size
    with pytest.raises(PipelineError, match="variants.openvino.ov-int4.group_size"):
        params.load(_write(tmp_path, raw))


def test_unknown_backend_group_names_the_closest(tmp_path, raw):
    raw["variants"]["openvno"] = raw["variants"].pop("openvino")
    with pytest.raises(PipelineError, match=r"variants: 'openvno' is not a backend; did you mean 'openvino'\?"):
        params.load(_write(tmp_path, raw))


def test_a_variant_name_is_unique_across_backends(tmp_path, raw):
    raw["variants"]["onnx_genai"]["ov-int4"] = raw["variants"]["onnx_genai"]["ort-cpu-int4"]
    with pytest.raises(PipelineError, match="variant 'ov-int4' is under both (openvino and onnx_genai|onnx_genai and openvino)"):
        params.load(_write(tmp_path, raw))


@pytest.mark.parametrize("section, name", [("variants", "source"), ("variants", "reference"),
                                           ("variants", "ir-fp16"), ("models", "native")])
def test_names_that_collide_with_the_layout_are_refused(tmp_path, raw, section, name):
    if section == "variants":
        raw["variants"]["openvino"][name] = raw["variants"]["openvino"]["ov-fp16"]
    else:
        raw["models"][name] = raw["models"]["smollm2"]
    with pytest.raises(PipelineError, match=rf"{section[:-1]} name '{name}' is taken: artifacts/"):
        params.load(_write(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        params.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        params.load(bad)


def test_a_model_names_the_variants_it_builds(tmp_path, raw):
    raw["models"]["other"] = {"source": "local", "id": "/nowhere", "variants": ["ort-cpu-int4", "ov-int4"]}
    p = params.load(_write(tmp_path, raw))
    assert p.variants_of("other") == [v for v in p.variants if v in ("ov-int4", "ort-cpu-int4")]  # params' order
    assert p.variants_of("smollm2") == list(p.variants)  # none named: every variant
    build = yaml.safe_load(params.build_yaml(p, "other"))
    assert build["builds"] == {"openvino": {"other-ov-int4": {"model": "other", "variant": "ov-int4"}},
                               "onnx_genai": {"other-ort-cpu-int4": {"model": "other", "variant": "ort-cpu-int4"}},
                               "npu_library": {}, "openvino_ep": {}}
    # its params: the values as params.yaml writes them, this model's and its variants' alone
    assert build["models"] == {"other": raw["models"]["other"]}
    assert build["variants"] == {"openvino": {"ov-int4": raw["variants"]["openvino"]["ov-int4"]},
                                 "onnx_genai": {"ort-cpu-int4": raw["variants"]["onnx_genai"]["ort-cpu-int4"]},
                                 "npu_library": {}, "openvino_ep": {}}
    assert (build["smoke"], build["quality"]) == (raw["smoke"], raw["quality"])


def test_the_repo_has_every_models_dvc_files_as_params_yaml_gives_them():
    """models/<model>/{dvc.yaml,build.yaml} are what params.yaml and models/stages.yaml give (`check` fails
    otherwise), and no model's folder is left over."""
    from pipeline import dvcfiles

    p = params.load(ROOT / "params.yaml")
    expected = dvcfiles.expected(p, ROOT)
    assert {path: path.read_text() for path in expected} == expected
    assert sorted(d.name for d in (ROOT / "models").iterdir() if d.is_dir()) == sorted(p.models)


@pytest.mark.parametrize("chosen, message", [
    (["ov-int5"], "params.yaml: models.other.variants: unknown variant 'ov-int5'; did you mean 'ov-int4'?"),
    (["ov-int4", "ov-int4"], "params.yaml: models.other.variants: ['ov-int4', 'ov-int4'] names a variant twice"),
    ([], "params.yaml: models.other.variants: List should have at least 1 item"),
])
def test_a_models_variant_list_is_checked(tmp_path, raw, chosen, message):
    raw["models"]["other"] = {"source": "local", "id": "/nowhere", "variants": chosen}
    with pytest.raises(PipelineError) as e:
        params.load(_write(tmp_path, raw))
    assert str(e.value).startswith(message), str(e.value)


def test_two_pairs_that_would_share_a_stage_name_are_refused(tmp_path, raw):
    raw["models"] = {"a-ov": {"source": "local", "id": "/x", "variants": ["int4"]},
                     "a": {"source": "local", "id": "/y", "variants": ["ov-int4"]}}
    raw["variants"]["openvino"]["int4"] = dict(raw["variants"]["openvino"]["ov-int4"])
    with pytest.raises(PipelineError, match=r"both give the stage name \.\.\.@a-ov-int4"):
        params.load(_write(tmp_path, raw))
