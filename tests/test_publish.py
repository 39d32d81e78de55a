"""pipeline/publish.py with the real huggingface_hub.HfApi client against tests/hubserver.py, a STAND-IN for the
Hugging Face Hub on 127.0.0.1 (no uploadable hub server exists on PyPI); and a real local DVC remote.

The client takes Xet for large files whenever hf_xet is installed; the stand-in speaks the LFS protocol only, so
these tests set HF_HUB_DISABLE_XET (the Xet path is exercised by no test here)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download

from pipeline.stages import package, publish
from pipeline.errors import PipelineError
from tests import project, tinyrelease
from tests.hubserver import HubServer, Lfs

TOKEN = "hf_standin_7Qz3kX9pL2mV8rT4wY6u"  # unique, so a scan for it finds only leaks


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # read at import; is_xet_available() reads this
    with HubServer(token=TOKEN) as server:
        yield server


@pytest.fixture
def lfs_hub(monkeypatch):
    """The stand-in with the hub's large-file path at test sizes: LFS from 8 KiB, multipart parts of 8 KiB."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(token=TOKEN, lfs_threshold=8 << 10, part_size=8 << 10) as server:
        yield server


def _publish(hub, release, version="v1.0.0", **kw):
    out = io.StringIO()
    plans = publish.publish({"ov-int4": release}, "acme/m", version, endpoint=hub.endpoint, out=out, **kw)
    return plans, out.getvalue()


def test_publish_download_fresh_verify_then_republish_is_a_noop(hub, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    rel = tinyrelease.build(tmp_path / "build")
    _, log = _publish(hub, rel)
    assert "acme/m-ov-int4: create repo; one commit: 6 file(s)" in log and "tag v1.0.0" in log
    assert hub.n_commits("acme/m-ov-int4") == 1
    assert hub.repos["acme/m-ov-int4"].tags["v1.0.0"] == hub.repos["acme/m-ov-int4"].branches["main"]

    # A user's download: fresh cache, by tag, then every byte against manifest.json.
    got = snapshot_download("acme/m-ov-int4", revision="v1.0.0", endpoint=hub.endpoint,
                            cache_dir=tmp_path / "fresh-cache")
    assert package.verify(got)["files"] == tinyrelease.manifest(rel)["files"]

    _, again = _publish(hub, rel)
    assert again.strip() == f"acme/m-ov-int4: v1.0.0 already holds {rel} (nothing to do)"
    assert hub.n_commits("acme/m-ov-int4") == 1
    assert not [line for line in hub.log if line.startswith("POST")][-1].startswith("POST /api/models/acme/m-ov-int4/commit")

    # The token is in no file written by building, publishing or downloading, nor in any log.
    captured = capfd.readouterr()
    for text in (log, again, caplog.text, captured.out, captured.err, "\n".join(hub.log)):
        assert TOKEN not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_new_version_is_one_commit_and_an_existing_tag_is_never_moved(hub, tmp_path):
    rel = tinyrelease.build(tmp_path / "a")
    _publish(hub, rel)
    rel2 = tinyrelease.build(tmp_path / "b", weights=b"\x03" * 100)

    with pytest.raises(PipelineError) as e:
        _publish(hub, rel2, "v1.0.0")
    assert "\n" not in str(e.value)
    assert "tag v1.0.0 already points at" in str(e.value) and "refusing to move a published tag" in str(e.value)
    assert hub.n_commits("acme/m-ov-int4") == 1

    _publish(hub, rel2, "v1.1.0")
    repo = hub.repos["acme/m-ov-int4"]
    assert hub.n_commits("acme/m-ov-int4") == 2
    assert repo.tags["v1.0.0"] != repo.tags["v1.1.0"] == repo.branches["main"]
    assert repo.commits[repo.tags["v1.1.0"]]["openvino_model.bin"] == b"\x03" * 100


def test_same_content_under_a_new_version_is_only_tagged(hub, tmp_path):
    rel = tinyrelease.build(tmp_path)
    _publish(hub, rel)
    _, out = _publish(hub, rel, "v1.0.1")
    assert out.splitlines()[0] == "acme/m-ov-int4: tag v1.0.1"
    repo = hub.repos["acme/m-ov-int4"]
    assert hub.n_commits("acme/m-ov-int4") == 1 and repo.tags["v1.0.1"] == repo.tags["v1.0.0"]


def test_dry_run_prints_the_plan_and_writes_nothing(hub, tmp_path):
    rel = tinyrelease.build(tmp_path)
    plans, out = _publish(hub, rel, dry_run=True)
    assert out.startswith("[dry-run] acme/m-ov-int4: create repo; one commit")
    assert plans[0].create_repo and hub.repos == {}


def _aipc_publish(proj, *args, env=None):
    """The real `aipc publish` command line, as a release job runs it; (exit code, stderr)."""
    import os
    import sys

    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "publish", "m", "ov-int4", "--repo-prefix", "acme/m",
                           "--version", "v1.0.0", *args], cwd=proj, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stderr


@pytest.fixture
def release_project(tmp_path):
    tinyrelease.build(tmp_path)
    params = project.ROOT / "params.yaml"
    text = params.read_text().replace("  smollm2:\n", "  m:\n")
    (tmp_path / "params.yaml").write_text(text)
    for data in ("pipeline/calibration", "pipeline/evalset"):  # params validation reads both (calibset's check)
        shutil.copytree(project.ROOT / data, tmp_path / data)
    return tmp_path


@pytest.mark.parametrize("case, env, args, expected", [
    ("unreachable hub", {}, ["--endpoint", "http://127.0.0.1:9"], "aipc publish: network error"),
    ("offline", {"HF_HUB_OFFLINE": "1"}, [], "aipc publish: needs the Hugging Face hub but HF_HUB_OFFLINE is set"),
    ("wrong token", {"HF_TOKEN": "hf_wrong"}, ["--hub"], "aipc publish: the hub refused the token (HTTP 401)"),
])
def test_publish_failures_a_user_can_cause_are_one_line(release_project, hub, case, env, args, expected):
    args = [a if a != "--hub" else f"--endpoint={hub.endpoint}" for a in args]
    code, err = _aipc_publish(release_project, *args, env=env)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aipc: error: {expected}"), (case, err)
    assert TOKEN not in err and "hf_wrong" not in err


def test_a_bad_version_or_a_missing_token_fail_in_one_line(hub, tmp_path, monkeypatch):
    rel = tinyrelease.build(tmp_path)
    with pytest.raises(PipelineError, match=r"version '1.0' is not vMAJOR.MINOR.PATCH"):
        _publish(hub, rel, "1.0")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(publish, "token", lambda: None)
    with pytest.raises(PipelineError, match="no Hugging Face token: set HF_TOKEN"):
        _publish(hub, rel)


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_dvc_remote_push_clone_pull_is_up_to_date(tmp_path, tiny_model):
    """The offline model-prep path: build and package, push to a DVC remote, clone the project fresh, pull, and
    nothing is left to rerun; the pulled release verifies against its manifest."""
    from tests.test_pipeline import _params

    params = _params({"mini": {"source": "local", "id": str(tiny_model)}}, ["ort-cpu-int4"])
    proj = project.make(tmp_path / "site", params)
    remote = tmp_path / "remote"
    project.dvc(proj, "remote", "add", "-d", "local", str(remote))
    target = project.target(proj, "onnx_genai-package@mini-ort-cpu-int4")  # models/mini/dvc.yaml:...
    project.dvc(proj, "repro", target)
    package.verify(proj / "releases/mini/ort-cpu-int4")
    publish.dvc_push(proj, "local")  # what `aipc publish --dvc-remote local` runs
    # metrics/ is git-ignored in this project, but a stage whose `cache: false` metrics file is missing is stale:
    # for a clone to be up to date, the release job commits them (they are what the model cards quote).
    _git(proj, "add", "-A")
    _git(proj, "add", "-f", "metrics")
    _git(proj, "commit", "-q", "-m", "build")

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(proj), str(clone))
    assert not (clone / "releases/mini/ort-cpu-int4").exists()
    project.dvc(clone, "pull", "--with-deps", target)
    package.verify(clone / "releases/mini/ort-cpu-int4")
    package.fsutil.verify_manifest(clone / "artifacts/mini/ort-cpu-int4")
    status = json.loads(project.dvc(clone, "status", "--json", "--with-deps", target).stdout or "{}")
    assert set(status) <= {"check"}, status  # check is always_changed: it runs, cheaply, on every repro
    shutil.rmtree(remote)  # nothing more may come from the remote
    rep = project.dvc(clone, "repro", "--dry", target)
    assert re.findall(r"Running stage '([^']+)'", rep.stdout) in ([], ["check"]), rep.stdout  # check always runs


def test_large_files_take_the_lfs_batch_and_multipart_path_and_arrive_intact(lfs_hub, tmp_path):
    """Above the threshold a file is uploaded as the hub takes it: preupload says "lfs", the LFS batch API grants a
    multipart upload, the parts go to storage, the completion joins them and the server checks sha256 and size;
    the commit then carries an LFS pointer. The tree lists its sha256, so republishing uploads nothing."""
    weights = hashlib.sha256(b"seed").digest() * 700  # 22400 bytes: 3 parts of 8 KiB
    rel = tinyrelease.build(tmp_path / "build", weights=weights)
    _, log = _publish(lfs_hub, rel)
    assert "acme/m-ov-int4: create repo; one commit" in log
    oid = hashlib.sha256(weights).hexdigest()
    mine = [u for u in lfs_hub.lfs_uploads if u["oid"] == oid]
    assert mine == [{"oid": oid, "size": len(weights), "transfer": "multipart", "parts": 3}], lfs_hub.lfs_uploads
    files = lfs_hub.repos["acme/m-ov-int4"].commits[lfs_hub.repos["acme/m-ov-int4"].branches["main"]]
    small = [n for n, d in files.items() if not isinstance(d, Lfs)]
    assert files["openvino_model.bin"] == Lfs(oid, len(weights)) and "openvino_model.xml" in small
    assert any("/info/lfs/objects/batch" in line for line in lfs_hub.log)

    got = snapshot_download("acme/m-ov-int4", revision="v1.0.0", endpoint=lfs_hub.endpoint,
                            cache_dir=tmp_path / "fresh-cache")
    assert (Path(got) / "openvino_model.bin").read_bytes() == weights
    assert package.verify(got)["files"] == tinyrelease.manifest(rel)["files"]

    uploads = len(lfs_hub.lfs_uploads)
    _, again = _publish(lfs_hub, rel)  # compared through the tree's LFS sha256, without downloading
    assert again.strip() == f"acme/m-ov-int4: v1.0.0 already holds {rel} (nothing to do)"
    _publish(lfs_hub, tinyrelease.build(tmp_path / "b", weights=weights, seconds=2.0), "v1.1.0")
    assert len(lfs_hub.lfs_uploads) == uploads  # the batch API says the object is there: not sent again


def test_the_stand_in_refuses_lfs_bytes_that_are_not_the_object(lfs_hub):
    """Server-side verification: a PUT whose bytes do not hash to the granted oid is refused, so is a commit
    naming an object never uploaded."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=lfs_hub.endpoint) as http:
        http.post("/api/repos/create", json={"name": "m", "organization": "acme"}, headers=auth).raise_for_status()
        good = b"x" * 100
        oid = hashlib.sha256(good).hexdigest()
        batch = http.post("/acme/m.git/info/lfs/objects/batch", headers=auth, json={
            "operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
            "objects": [{"oid": oid, "size": len(good)}]}).json()
        href = batch["objects"][0]["actions"]["upload"]["href"]
        bad = http.put(href, content=b"y" * 100)
        assert bad.status_code == 400 and f"not the object's {oid}" in bad.json()["error"]
        commit = "\n".join(json.dumps(x) for x in [
            {"key": "header", "value": {"summary": "s"}},
            {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": 100}}])
        refused = http.post("/api/models/acme/m/commit/main", content=commit, headers=auth)
        assert refused.status_code == 400 and "was never uploaded" in refused.json()["error"]
        chunked = iter([good[:30], good[30:]])  # a body of unknown length: chunked transfer encoding
        assert http.put(href, content=chunked).status_code == 200 and lfs_hub.has_object(oid, 100)
        assert http.put(href, content=good).status_code == 403  # a grant is used once
