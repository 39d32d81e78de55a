"""The pipeline as users drive it: `dvc repro` in a project, the `aipc` stage commands, their failures."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from pipeline import fsutil
from tests import project, tiny
from tests.conftest import ROOT

SMOKE = {"max_new_tokens": 4, "npu_max_prompt_len": 256, "npu_min_response_len": 64,
         "prompts": [{"text": "What is the capital of France?"}]}


def _params(models: dict, variants: list[str]) -> dict:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Random tiny weights say nothing about INT4 quality: measure and report, but don't gate.
    quality = {**base["quality"], "max_new_tokens": 4, "long_sequence_tokens": 0, "top_k": 16, "enforce": False}
    return {"models": models, "variants": project.variants(variants), "smoke": SMOKE,
            "quality": quality, "native": {}}


def _name(address: str) -> str:
    """A stage's name without its dvc.yaml's path (models/<model>/dvc.yaml:): names are unique across the files."""
    return address.rsplit(":", 1)[-1]


def _changed_stages(proj) -> set[str]:
    """What `dvc status` finds stale, but for `check`, which is `always_changed` (it runs on every repro)."""
    out = project.dvc(proj, "status", "--json").stdout
    return {_name(s) for s in json.loads(out or "{}")} - {"check"}


def _ran(repro: str) -> list[str]:
    """The stages a `dvc repro` ran, but for `check`."""
    return [_name(s) for s in re.findall(r"Running stage '([^']+)'", repro) if s != "check"]


def _listed(proj) -> list[str]:
    """Every stage DVC knows, in every dvc.yaml."""
    return [_name(s) for s in project.dvc(proj, "stage", "list", "--all", "--name-only").stdout.split()]


def test_two_models_side_by_side(tmp_path, tiny_models):
    models = {
        "mini": {"source": "local", "id": str(tiny_models["mini-4k"])},
        "medium": {"source": "local", "id": str(tiny_models["medium-4k"])},
    }
    proj = project.make(tmp_path, _params(models, ["ov-int4", "ort-cpu-int4"]))
    project.dvc(proj, "repro", "--all-pipelines")  # the root dvc.yaml's alone would leave the packages out

    for model in models:
        for variant in ("ov-int4", "ort-cpu-int4"):
            art = proj / "artifacts" / model / variant
            assert (art / "manifest.sha256.json").is_file()
            smoke = json.loads((proj / "metrics" / model / variant / "smoke.json").read_text())
            assert smoke["status"] == "passed", smoke.get("reason")
            assert smoke["runs"][0]["prompts"][0]["new_tokens"] > 0
            quality = json.loads((proj / "metrics" / model / variant / "quality.json").read_text())
            assert 0.5 < quality["gate"]["cosine"] <= 1.0
        assert (proj / "artifacts" / model / "ov-int4" / "openvino_model.xml").is_file()
    assert not list(proj.glob("artifacts/*/.*partial*"))

    # Nothing changed: a second repro runs no stage.
    assert _changed_stages(proj) == set()
    second = project.dvc(proj, "repro", "--all-pipelines")
    assert _ran(second.stdout) == []

    # One variant's knob: only that variant's stages, for every model, go stale.
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["variants"]["openvino"]["ov-int4"]["ratio"] = 0.8
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the value reaches each model's build.yaml, which `aipc repro` writes first (`check` rewrites it and fails once)
    assert project.aipc(proj, "check", check=False).returncode == 1
    assert project.aipc(proj, "check").returncode == 0
    assert _changed_stages(proj) == {
        f"openvino-{stage}@{model}-ov-int4" for stage in ("export", "smoke", "quality", "package") for model in models
    } | {"report"}


def test_one_models_failing_export_blocks_only_what_depends_on_it(tmp_path, tiny_models):
    """Three models, as issue 14 tried them: `long` is a 128k checkpoint whose longrope attention_factor the ONNX
    builder would ignore, so its ort-cpu-int4 export is refused; `medium` names only the variant it wants. `aipc
    repro` (what `make repro` runs; here up to the quality stages, the report running after the failure) builds
    everything that does not depend on the failed export, reports that export's failure by name and exits 1; the
    report has one row per configured model x variant and none for a model no longer in params.yaml."""
    long = shutil.copytree(tiny_models["mini-128k"], tmp_path / "long-src")
    tiny.resave_config(long, legacy_type=False, attention_factor=2.0)
    models = {
        "mini": {"source": "local", "id": str(tiny_models["mini-4k"])},
        "long": {"source": "local", "id": str(long)},
        "medium": {"source": "local", "id": str(tiny_models["mini-4k"]), "variants": ["ort-cpu-int4"]},
    }
    proj = project.make(tmp_path / "proj", _params(models, ["ov-fp16", "ort-cpu-int4"]))
    fsutil.write_json(proj / "metrics" / "gone" / "ov-fp16" / "quality.json", {"gate": {"cosine": 0.1}})  # stale

    listed = _listed(proj)
    assert "onnx_genai-export@medium-ort-cpu-int4" in listed and not [s for s in listed if "medium-ov-fp16" in s]
    built = [("mini", "ov-fp16"), ("mini", "ort-cpu-int4"), ("long", "ov-fp16"), ("medium", "ort-cpu-int4")]
    targets = [f"{'openvino' if v.startswith('ov') else 'onnx_genai'}-quality@{m}-{v}" for m, v in built]
    targets.append("onnx_genai-quality@long-ort-cpu-int4")
    proc = project.aipc(proj, "repro", *targets, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"aipc: error: dvc repro failed \(exit \d+\); 1 of 5 model x variant builds did not complete: "
                    r"long/ort-cpu-int4: aipc export long ort-cpu-int4: export long-ort-cpu-int4: ", last), last
    assert "attention_factor" in last and "failed to reproduce 'models/long/dvc.yaml:onnx_genai-export@long-ort-cpu-int4'" in proc.stderr

    for model, variant in built:
        assert json.loads((proj / "metrics" / model / variant / "quality.json").read_text())["gate"]["cosine"] > 0.5
    assert not (proj / "artifacts" / "long" / "ort-cpu-int4").exists()
    rows = {(r["model"], r["variant"]): r for r in json.loads((proj / "reports" / "quality.json").read_text())["rows"]}
    assert set(rows) == {(m, v) for m in models for v in ("ov-fp16", "ort-cpu-int4")}
    assert rows["medium", "ov-fp16"]["status"] == "not configured"
    assert rows["long", "ort-cpu-int4"]["status"] == "failed" and "attention_factor" in rows["long", "ort-cpu-int4"]["reason"]
    assert all(rows[b]["status"] == "ok" or rows[b]["status"] == "ungated" for b in built), rows
    assert "long/ort-cpu-int4" in proc.stdout and "failed: aipc export long ort-cpu-int4" in proc.stdout

    # The failure's record is the report's until that stage succeeds: fixed, the next run builds it and clears it.
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["models"]["long"]["variants"] = ["ov-fp16"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project.aipc(proj, "repro", *targets[:-1])
    listed = _listed(proj)
    assert "onnx_genai-export@long-ort-cpu-int4" not in listed
    rows = {(r["model"], r["variant"]): r["status"] for r in json.loads(project.aipc(proj, "report") and
                                                                           (proj / "reports" / "quality.json").read_text())["rows"]}
    assert rows["long", "ort-cpu-int4"] == "not configured" and rows["long", "ov-fp16"] in ("ok", "ungated")


def test_touching_one_backend_makes_only_its_stages_stale(tmp_path, tiny_model):
    """The backend is the unit: an edit inside pipeline/backends/<name>/ reruns that backend's stages and nothing
    else (its toolchain lock likewise); an edit of the shared backend module reruns all of them."""
    per_variant = {"openvino": "ov-int4", "onnx_genai": "ort-cpu-int4", "npu_library": "npu-lib-int8",
                   "openvino_ep": "ovep-int4-gpu"}
    proj = project.make(tmp_path, _params({"mini": {"source": "local", "id": str(tiny_model)}}, list(per_variant.values())))
    # Everything but the C++ runner (its wheel build is test_native's), which stays stale throughout.
    project.aipc(proj, "repro", *(f"{b}-package@mini-{v}" for b, v in per_variant.items()))
    not_run = _changed_stages(proj)
    assert not_run == {"runner_wheel", "runner@mini", "report"}, not_run
    for backend, variant in per_variant.items():
        touched = proj / "pipeline" / "backends" / backend / "card.py"
        original = touched.read_text()
        touched.write_text(original + "\n# touched\n")
        stale = {f"{backend}-{stage}@mini-{variant}" for stage in ("export", "smoke", "quality", "package")}
        assert _changed_stages(proj) - not_run == stale | ({"ir@mini"} if backend == "openvino" else set())
        touched.write_text(original)
        assert _changed_stages(proj) == not_run
    common = proj / "pipeline" / "backends" / "common.py"
    common.write_text(common.read_text() + "\n# touched\n")
    assert {s.split("-")[0] for s in _changed_stages(proj) - not_run} >= set(per_variant)


def test_stage_errors_are_one_line_and_leave_no_partial_artifact(tmp_path, tiny_model):
    models = {"mini": {"source": "local", "id": str(tiny_model)}}
    proj = project.make(tmp_path, _params(models, ["ort-cpu-int4"]))
    project.aipc(proj, "fetch", "mini")
    weights = proj / "artifacts" / "mini" / "source" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))

    proc = project.aipc(proj, "export", "mini", "ort-cpu-int4", check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert re.search(r"aipc: error: .*model\.safetensors: sha256 mismatch", err), proc.stderr
    assert not (proj / "artifacts" / "mini" / "ort-cpu-int4").exists()
    assert not list((proj / "artifacts" / "mini").glob(".*partial*"))


def test_misspelt_params_key_fails_the_stage_naming_the_key(tmp_path, tiny_model):
    params = _params({"mini": {"source": "local", "id": str(tiny_model)}}, ["ov-fp16"])
    params["variants"]["openvino"]["ov-fp16"]["weight_fromat"] = "fp16"
    proj = project.make(tmp_path, params)
    proc = project.aipc(proj, "fetch", "mini", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "aipc: error: params.yaml: variants.openvino.ov-fp16.weight_fromat: unknown key; did you mean "
        "'weight_format'? (valid keys here: weight_format, sym, group_size, ratio, group_size_fallback, "
        "from_fp16_ir, npu, calibration, num_samples, seq_len, awq, scale_estimation, gptq, lora_correction, "
        "sensitivity_metric, backup_precision, kv_cache_precision, dynamic_quantization_group_size)"
    )
    assert not (proj / "artifacts").exists()


def test_unknown_model_or_variant(tmp_path, tiny_model):
    proj = project.make(tmp_path, _params({"mini": {"source": "local", "id": str(tiny_model)}}, ["ov-fp16"]))
    assert "unknown model 'nope' (params.yaml models: mini)" in project.aipc(proj, "fetch", "nope", check=False).stderr
    proc = project.aipc(proj, "smoke", "mini", "ov-int8", check=False)
    assert "unknown variant 'ov-int8' (params.yaml variants: ov-fp16)" in proc.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """A project with one ONNX variant, built through packaging by plain `dvc repro`."""
    proj = project.make(tmp_path_factory.mktemp("built"), _params({"mini": {"source": "local", "id": str(tiny_model)}},
                                                                  ["ort-cpu-int4"]))
    project.dvc(proj, "repro", project.target(proj, "onnx_genai-package@mini-ort-cpu-int4"))
    return proj


def _snapshot(proj) -> dict[str, tuple[int, int]]:
    """Every file the pipeline wrote, with its inode and mtime: a rewrite shows even when the bytes are the same.
    Not the check stage's marker, which DVC unprotects (copies) before running the stage: its bytes never change."""
    files = [p for top in ("artifacts", "metrics", "releases") for p in (proj / top).rglob("*") if p.is_file()
             and p.name != "params-valid.json"]
    return {p.relative_to(proj).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in [*files, proj / "dvc.lock", *proj.glob("models/*/*")]}


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["variants"]["onnx_genai"]["ort-cpu-int4"].update(block_sze=64),
     "params.yaml: variants.onnx_genai.ort-cpu-int4.block_sze: unknown key; did you mean 'block_size'?"),
    (lambda p: p.update(models={}), "params.yaml: models: "),
    (lambda p: p["variants"]["onnx_genai"].update(source={"precision": "int4", "execution_provider": "cpu"}),
     "params.yaml: variant name 'source' is taken: artifacts/<model>/source holds the fetched checkpoint"),
])
def test_invalid_params_fail_dvc_repro_first_and_change_nothing_on_disk(built, edit, message):
    before = _snapshot(built)
    original = (built / "params.yaml").read_text()
    params = yaml.safe_load(original)
    edit(params)
    (built / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = project.dvc(built, "repro", check=False)
        # A name taken by the layout makes two stages write one path, which DVC refuses before any stage runs
        # (advising `dvc remove`); `aipc check` gives the reason.
        checked = project.aipc(built, "check", check=False)
    finally:
        (built / "params.yaml").write_text(original)
    assert proc.returncode != 0 and checked.returncode == 1
    assert checked.stderr.strip() == f"aipc: error: {message}".strip() or checked.stderr.startswith(
        f"aipc: error: {message}"), checked.stderr
    assert "overlapping output" in proc.stderr or f"aipc: error: {message}" in proc.stderr, proc.stderr[-2000:]
    assert _snapshot(built) == before


def test_an_in_place_edit_is_caught_by_the_next_repro_and_repaired_by_one_command(built):
    weights = built / "artifacts" / "mini" / "source" / "model.safetensors"
    good = fsutil.sha256_file(weights)
    with open(weights, "r+b") as f:  # in place, as root and in-place editors do: the DVC cache object is this file
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    proc = project.dvc(built, "repro", check=False)
    assert proc.returncode != 0
    assert ("aipc: error: artifacts/mini/source/model.safetensors: sha256" in proc.stderr
            and "run `aipc repair`" in proc.stderr), proc.stderr[-2000:]

    project.aipc(built, "repair")
    assert fsutil.sha256_file(weights) == good
    cached = [p for p in (built / ".dvc" / "cache").rglob("*") if p.is_file() and p.stat().st_ino == weights.stat().st_ino]
    assert cached and all(fsutil.sha256_file(p) == good for p in cached)  # good bytes in the cache too
    assert _changed_stages(built) - {"runner_wheel", "runner@mini", "report"} == set()


def test_debris_of_interrupted_runs_is_swept_and_failed_fetches_leave_nothing(built):
    partial = built / "artifacts" / "mini" / ".ort-cpu-int4.partial-999999"  # kill -9, outputs then restored
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    lock_debris = built / "models" / "mini" / ".dvc.lock.partial-999999"  # a `dvc repro` killed mid-write
    lock_debris.write_text("schema: '2.0'\nstages:\n")
    project.dvc(built, "repro", project.target(built, "onnx_genai-smoke@mini-ort-cpu-int4"))
    assert not partial.exists() and not lock_debris.exists()

    params = yaml.safe_load((built / "params.yaml").read_text())
    params["models"]["gone"] = {"source": "local", "id": str(built / "no-such-checkpoint")}
    other = project.make(built.parent / "other", params)
    proc = project.aipc(other, "fetch", "gone", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert not (other / "artifacts" / "gone").exists()


def test_stale_model_dvc_files_fail_the_check_and_are_rewritten(tmp_path):
    """DVC reads models/<model>/dvc.yaml and build.yaml before any stage runs; after an edit of a model's `variants:`
    (or of models/stages.yaml) the check stage finds them stale, rewrites them and fails, so nothing is built from
    the old list; a model removed from params.yaml loses its folder (its lock included)."""
    models = {"mini": {"source": "local", "id": str(tmp_path / "nowhere")},
              "gone": {"source": "local", "id": str(tmp_path / "nowhere")}}
    params = _params(models, ["ov-fp16", "ort-cpu-int4"])
    proj = project.make(tmp_path / "proj", params)
    (proj / "models" / "gone" / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    params["models"]["mini"]["variants"] = ["ort-cpu-int4"]
    del params["models"]["gone"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = project.aipc(proj, "check", check=False)
    assert proc.returncode == 1 and re.search(r"aipc: error: models/mini/build.yaml was out of date with params.yaml "
                                              r"or models/stages.yaml \(2 file\(s\)", proc.stderr), proc.stderr
    assert "mini-ov-fp16" not in (proj / "models" / "mini" / "build.yaml").read_text()
    assert not (proj / "models" / "gone").exists()
    assert project.aipc(proj, "check").returncode == 0
    listed = _listed(proj)
    assert "onnx_genai-export@mini-ort-cpu-int4" in listed and "openvino-export@mini-ov-fp16" not in listed

    stages = proj / "models" / "stages.yaml"
    stages.write_text(stages.read_text() + "\n# edited\n")
    proc = project.aipc(proj, "check", check=False)
    assert proc.returncode == 1 and "models/mini/dvc.yaml was out of date" in proc.stderr, proc.stderr
    assert (proj / "models" / "mini" / "dvc.yaml").read_text() == stages.read_text()
