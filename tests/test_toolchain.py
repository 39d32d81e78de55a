"""pipeline/toolchain.py: exporter version locks, their drift check, and the DVC wiring that reruns only the exports
of the backend whose toolchain moved."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from pipeline import toolchain
from pipeline.errors import PipelineError
from tests import project

VARIANTS = {"ov-int4": SimpleNamespace(backend="openvino"), "ort-cpu-int4": SimpleNamespace(backend="onnx_genai")}


def test_write_then_check_passes_and_the_lock_is_a_pip_constraints_file(tmp_path):
    written = toolchain.write(tmp_path, VARIANTS)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "toolchain/npu_library.txt", "toolchain/onnx_genai.txt", "toolchain/openvino.txt",
        "toolchain/variant/ort-cpu-int4.txt", "toolchain/variant/ov-int4.txt"]
    toolchain.check(tmp_path, VARIANTS)
    assert toolchain.write(tmp_path, VARIANTS) == []
    lines = [ln for ln in (tmp_path / "toolchain/openvino.txt").read_text().splitlines() if not ln.startswith("#")]
    assert any(ln.startswith("nncf==") for ln in lines) and all("==" in ln for ln in lines)


def test_drift_fails_in_one_line_naming_the_package(tmp_path, monkeypatch):
    toolchain.write(tmp_path, VARIANTS)
    real = toolchain.installed
    monkeypatch.setattr(toolchain, "installed", lambda n: "99.0" if n == "nncf" else real(n))
    with pytest.raises(PipelineError) as e:
        toolchain.check(tmp_path, VARIANTS)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("toolchain/openvino.txt: nncf is 99.0, locked ")
    changed = toolchain.write(tmp_path, VARIANTS)
    assert sorted(p.name for p in changed) == ["openvino.txt", "ov-int4.txt"]  # the ONNX locks did not move


def test_a_missing_lock_names_the_file(tmp_path):
    toolchain.write(tmp_path, VARIANTS)
    (tmp_path / "toolchain/variant/ov-int4.txt").unlink()
    with pytest.raises(PipelineError, match=r"toolchain/variant/ov-int4.txt: missing; run `aipc toolchain --write`"):
        toolchain.check(tmp_path, VARIANTS)


def test_dvc_reruns_only_the_exports_whose_backend_lock_changed(tmp_path, monkeypatch):
    """The dvc.yaml wiring, with stand-in stages (shell copies) shaped like the real export matrix."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"variants": {k: {"backend": v.backend}
                                                                        for k, v in VARIANTS.items()}}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"export": {
        "matrix": {"variant": "${variants}"},
        "cmd": "mkdir -p out && cp toolchain/variant/${item.variant}.txt out/${item.variant}.txt",
        "deps": ["toolchain/variant/${item.variant}.txt"],
        "outs": ["out/${item.variant}.txt"],
    }}}))
    project.run(tmp_path, "git", "init", "-q")
    project.dvc(tmp_path, "init", "-q")
    toolchain.write(tmp_path, VARIANTS)
    project.dvc(tmp_path, "repro")
    assert json.loads(project.dvc(tmp_path, "status", "--json").stdout or "{}") == {}

    real = toolchain.installed
    monkeypatch.setattr(toolchain, "installed", lambda n: "99.0" if n == "nncf" else real(n))
    toolchain.write(tmp_path, VARIANTS)
    assert set(json.loads(project.dvc(tmp_path, "status", "--json").stdout)) == {"export@ov-int4"}
