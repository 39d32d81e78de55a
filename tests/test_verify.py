"""`aipc verify` (pipeline/stages/verify.py) on releases of the tiny Phi-3: a release rebuilds to the same bytes, a
changed weight byte fails naming the file (caught by the manifest, and by the rebuild when the manifest and
provenance were rewritten to match), and a data-aware release built from other activation statistics (what another
CPU's kernels give) passes within the bound its provenance states or fails past it, as the numbers say."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from pipeline import fsutil
from pipeline.stages import package
from tests import project
from tests.conftest import ROOT

CALIBRATION = {"num_samples": 8, "seq_len": 64}


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """A project building ov-int4 and ov-int4-calib of the tiny model, packaged (no smoke or quality: the release
    needs neither), and the statistics cache its calibration filled."""
    tmp = tmp_path_factory.mktemp("verify")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = project.variants(["ov-int4", "ov-int4-calib"])
    variants["openvino"]["ov-int4-calib"].update(CALIBRATION)
    quality = {**base["quality"], "max_new_tokens": 4, "long_sequence_tokens": 0, "top_k": 16, "enforce": False}
    proj = project.make(tmp / "proj", {"models": {"tiny": {"source": "local", "id": str(tiny_model)}},
                                       "variants": variants, "smoke": base["smoke"], "quality": quality,
                                       "native": {}})
    stats = {"AIPC_STATISTICS_CACHE": str(tmp / "stats")}
    for args in (("fetch", "tiny"), ("ir", "tiny"), ("export", "tiny", "ov-int4"), ("package", "tiny", "ov-int4"),
                 ("export", "tiny", "ov-int4-calib"), ("package", "tiny", "ov-int4-calib")):
        project.run(proj, str(project.BIN / "aipc"), *args, extra_env=stats)
    return {"proj": proj, "stats": tmp / "stats", "tmp": tmp}


def _verify(proj, release, stats_dir) -> tuple[int, list[str], str]:
    proc = project.run(proj, str(project.BIN / "aipc"), "verify", str(release), check=False,
                       extra_env={"AIPC_STATISTICS_CACHE": str(stats_dir)})
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def _verdicts(lines: list[str]) -> dict[str, str]:
    return {line.split()[0]: line.split(None, 1)[1] for line in lines if line.strip() and not line.endswith("verified")}


def test_a_release_rebuilds_to_the_same_bytes(built, tmp_path):
    release = built["proj"] / "releases/tiny/ov-int4"
    prov = json.loads((release / package.PROVENANCE).read_text())
    assert prov["rebuild"]["identical"] == sorted(prov["artifact_files_sha256"])
    assert "machine_dependent" not in prov["rebuild"]
    code, lines, err = _verify(built["proj"], release, tmp_path / "stats")
    assert code == 0, err
    verdicts = _verdicts(lines)
    assert verdicts["openvino_model.bin"] == "identical" and verdicts["openvino_model.xml"] == "identical"
    assert verdicts["source"].endswith("identical")
    assert verdicts["README.md"].startswith("not compared")
    assert not list(built["proj"].glob(".aipc-verify-*"))  # the scratch rebuild is gone


def _flip_byte(release, copy, *, rewrite_lists: bool):
    shutil.copytree(release, copy)  # a copy: the release's files are hard links into the DVC outputs
    weights = copy / "openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.unlink()
    weights.write_bytes(bytes(data))
    if rewrite_lists:  # a tamperer who also rewrites what the release says of itself
        prov = json.loads((copy / package.PROVENANCE).read_text())
        prov["artifact_files_sha256"]["openvino_model.bin"] = fsutil.sha256_file(weights)
        (copy / package.PROVENANCE).unlink()
        fsutil.write_json(copy / package.PROVENANCE, prov)
        (copy / package.MANIFEST).unlink()
        fsutil.write_json(copy / package.MANIFEST, package.manifest(copy))
    return copy


def test_a_flipped_weight_byte_fails_naming_the_file(built, tmp_path):
    release = built["proj"] / "releases/tiny/ov-int4"
    code, _, err = _verify(built["proj"], _flip_byte(release, tmp_path / "plain", rewrite_lists=False),
                           tmp_path / "stats")
    assert code == 1 and err.strip().count("\n") == 0, err
    assert "openvino_model.bin: sha256 mismatch" in err

    code, lines, err = _verify(built["proj"], _flip_byte(release, tmp_path / "rewritten", rewrite_lists=True),
                               tmp_path / "stats")
    assert code == 1
    assert _verdicts(lines)["openvino_model.bin"].startswith("FAIL: differs from the rebuild")
    assert _verdicts(lines)["openvino_model.xml"] == "identical"
    assert err.strip().splitlines()[-1] == (f"aipc: error: {tmp_path / 'rewritten'}: 1 file(s) differ from the "
                                            "rebuild (the FAIL lines above)")


def _perturbed_release(built, name: str, noise: float):
    """ov-int4-calib built from the cached activation statistics times (1 + noise * N(0, 1)), as another CPU's
    kernels would have computed them (their last bits) or a broken calibration would (large noise)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    stats = built["tmp"] / f"stats-{name}"
    shutil.copytree(built["stats"], stats)
    rng = np.random.default_rng(0)
    for f in stats.rglob("*.safetensors"):
        with safe_open(f, "np") as st:
            metadata, tensors = st.metadata(), {k: st.get_tensor(k) for k in st.keys()}
        save_file({k: np.asarray(v * (1 + noise * rng.standard_normal(v.shape)), dtype=v.dtype)
                   if v.dtype.kind == "f" else v for k, v in tensors.items()}, f, metadata=metadata)
    proj = built["proj"]
    for args in (("export", "tiny", "ov-int4-calib"), ("package", "tiny", "ov-int4-calib")):
        project.run(proj, str(project.BIN / "aipc"), *args, extra_env={"AIPC_STATISTICS_CACHE": str(stats)})
    copy = built["tmp"] / f"release-{name}"
    shutil.copytree(proj / "releases/tiny/ov-int4-calib", copy)
    return copy


@pytest.mark.parametrize("name, noise, passes", [("last-bits", 1e-5, True), ("broken", 3.0, False)])
def test_a_data_aware_release_from_other_statistics_is_judged_by_its_bound(built, name, noise, passes):
    release = _perturbed_release(built, name, noise)
    prov = json.loads((release / package.PROVENANCE).read_text())
    spec = prov["rebuild"]["machine_dependent"]
    assert spec["files"] == ["openvino_model.bin"] and spec["backend"] == "openvino"
    assert "openvino_model.xml" in prov["rebuild"]["identical"]
    # verified with the statistics this machine computes (a cache of its own, empty)
    code, lines, err = _verify(built["proj"], release, built["tmp"] / f"fresh-{name}")
    verdicts = _verdicts(lines)
    assert verdicts["openvino_model.xml"] == "identical"
    bin_line = verdicts["openvino_model.bin"]
    assert "codes differing" in bin_line and "KL vs FP32" in bin_line, bin_line
    if passes:
        assert code == 0 and bin_line.startswith("within bound"), (bin_line, err)
    else:
        assert code == 1 and bin_line.startswith("FAIL: past the bound"), (bin_line, err)


def test_a_hub_release_is_verified_by_revision(built, tmp_path, monkeypatch):
    from huggingface_hub import constants as hf_constants

    from pipeline.stages import publish
    from tests.hubserver import HubServer

    token = "hf_verify_standin_9Jd2"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(token=token) as hub:
        publish.publish({"ov-int4": built["proj"] / "releases/tiny/ov-int4"}, "acme/tiny", "v1.0.0",
                        endpoint=hub.endpoint)
        proc = project.run(built["proj"], str(project.BIN / "aipc"), "verify", "acme/tiny-ov-int4@v1.0.0",
                           check=False, extra_env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1",
                                                   "AIPC_STATISTICS_CACHE": str(tmp_path / "stats")})
    assert proc.returncode == 0, proc.stderr
    assert _verdicts(proc.stdout.splitlines())["openvino_model.bin"] == "identical"
    assert proc.stdout.strip().endswith("acme/tiny-ov-int4@v1.0.0: verified")


def test_params_or_tools_other_than_the_releases_fail_in_one_line(built, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(built["proj"] / "releases/tiny/ov-int4", release)
    prov = json.loads((release / package.PROVENANCE).read_text())
    for edit, expected in (
        (lambda p: p["variant_params"].update(group_size=64), "params.yaml's variant ov-int4: group_size 64 in the "
                                                              "release, 128 here"),
        (lambda p: p["export"]["versions"].update(nncf="2.0.0"), "the release was exported with nncf 2.0.0, this "
                                                                 "machine has "),
        # a tamperer who declares the weights machine-dependent, hoping for a bound
        (lambda p: p["rebuild"].update(machine_dependent={"files": ["openvino_model.bin"], "why": "",
                                                          "bound": {"code_share": 1, "kl_shift": 1},
                                                          "backend": "openvino"}),
         "provenance.json lets openvino_model.bin (bound {'code_share': 1, 'kl_shift': 1}) differ from a rebuild, "
         "where this project lets no file of ov-int4"),
    ):
        changed = json.loads(json.dumps(prov))
        edit(changed)
        (release / package.PROVENANCE).unlink()
        fsutil.write_json(release / package.PROVENANCE, changed)
        (release / package.MANIFEST).unlink()
        fsutil.write_json(release / package.MANIFEST, package.manifest(release))
        code, _, err = _verify(built["proj"], release, tmp_path / "stats")
        assert code == 1 and err.strip().count("\n") == 0 and expected in err, err
