"""pipeline/stages/toolchain.py: exporter version locks, their drift check, and the DVC wiring that reruns only the
exports of the backend whose toolchain moved."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.backends import common
from pipeline.errors import PipelineError
from pipeline.stages import toolchain
from tests import project


def _nncf_at(monkeypatch, version: str) -> None:
    real = common.version
    monkeypatch.setattr(common, "version", lambda n: version if n == "nncf" else real(n))


def test_write_then_check_passes_and_the_lock_is_a_pip_constraints_file(tmp_path):
    written = toolchain.write_locks(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "toolchain/npu_library.txt", "toolchain/onnx_genai.txt", "toolchain/openvino.txt",
        "toolchain/openvino_ep.txt"]
    toolchain.check_locks(tmp_path)
    assert toolchain.write_locks(tmp_path) == []
    lines = [ln for ln in (tmp_path / "toolchain/openvino.txt").read_text().splitlines() if not ln.startswith("#")]
    assert any(ln.startswith("nncf==") for ln in lines) and all("==" in ln for ln in lines)


def test_the_committed_locks_are_what_is_installed():
    toolchain.check_locks(project.ROOT)


def test_drift_fails_in_one_line_naming_the_package(tmp_path, monkeypatch):
    toolchain.write_locks(tmp_path)
    _nncf_at(monkeypatch, "99.0")
    with pytest.raises(PipelineError) as e:
        toolchain.check_locks(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("toolchain/openvino.txt: nncf is 99.0, locked ")
    changed = toolchain.write_locks(tmp_path)
    assert [p.name for p in changed] == ["openvino.txt"]  # the ONNX and NPU-library locks did not move


def test_a_missing_lock_names_the_file(tmp_path):
    toolchain.write_locks(tmp_path)
    (tmp_path / "toolchain/onnx_genai.txt").unlink()
    with pytest.raises(PipelineError, match=r"toolchain/onnx_genai.txt: missing; run `aipc toolchain --write`"):
        toolchain.check_locks(tmp_path)


def test_dvc_reruns_only_the_exports_whose_backend_lock_changed(tmp_path, monkeypatch):
    """The dvc.yaml wiring, with stand-in stages (shell copies) shaped like the real per-backend export matrices."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"variants": {
        "openvino": {"ov-int4": {}}, "onnx_genai": {"ort-cpu-int4": {}}}}))
    stages = {f"{b}-export": {
        "matrix": {"variant": f"${{variants.{b}}}"},
        "cmd": f"mkdir -p out && cp toolchain/{b}.txt out/${{item.variant}}.txt",
        "deps": [f"toolchain/{b}.txt"],
        "outs": ["out/${item.variant}.txt"],
    } for b in ("openvino", "onnx_genai")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    project.run(tmp_path, "git", "init", "-q")
    project.dvc(tmp_path, "init", "-q")
    toolchain.write_locks(tmp_path)
    project.dvc(tmp_path, "repro")
    assert json.loads(project.dvc(tmp_path, "status", "--json").stdout or "{}") == {}

    _nncf_at(monkeypatch, "99.0")
    toolchain.write_locks(tmp_path)
    assert set(json.loads(project.dvc(tmp_path, "status", "--json").stdout)) == {"openvino-export@ov-int4"}
