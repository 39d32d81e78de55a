"""The report's performance columns, dvc-plots rows and HTML page with its PNGs, from a small synthetic metrics tree
(no runtimes needed) and bench/real_size.py's table."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from types import SimpleNamespace

import pytest

from pipeline import fsutil
from pipeline.errors import PipelineError
from pipeline.layout import Layout
from pipeline.stages import report
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.params import QualityParams, Thresholds
from tests.conftest import ROOT

FP16 = OpenVINOVariant(backend="openvino", weight_format="fp16")
INT4 = OpenVINOVariant(backend="openvino", weight_format="int4", group_size=128, ratio=0.6, sym=True)
ORT4 = OnnxGenaiVariant(backend="onnx_genai", precision="int4", execution_provider="cpu")
VARIANTS = {"ov-fp16": FP16, "ov-int4": INT4, "ort-cpu-int4": ORT4}
GATE = QualityParams(thresholds={"fp16": Thresholds(min_cosine=0.999, max_kl=0.01),
                                 "int4": Thresholds(min_cosine=0.97, max_kl=0.8)})
# variant -> (cosine, top1, kl, weight bytes, decode tokens/s of the second prompt)
SYNTH = {"ov-fp16": (0.99999, 1.0, 2e-6, 270_000, 86.0), "ov-int4": (0.982, 0.72, 0.31, 100_000, 140.0),
         "ort-cpu-int4": (0.985, 0.61, 0.49, 80_000, 141.0)}


def _params(quality):
    return SimpleNamespace(quality=quality, variants=VARIANTS, models={"tiny": None}, variants_of=lambda m: list(VARIANTS))


def _prompt(ttft, tps):
    return {"text": "Paris", "new_tokens": 32, "ttft_ms": ttft, "tokens_per_s": tps}


@pytest.fixture
def project(tmp_path):
    """metrics/ and artifacts/ as the pipeline leaves them: ov-* artifacts on disk, ort-cpu-int4 only in export.json."""
    for name, (cos, top1, kl, wbytes, tps) in SYNTH.items():
        m = tmp_path / "metrics" / "tiny" / name
        gate = {"cosine": cos, "top1": top1, "kl": kl, "ppl_ratio": 1.01, "answers_identical": 1.0}
        fsutil.write_json(m / "quality.json", {"gate": gate, "peak_rss_mb": 900.0})
        runs = [{"device": "NPU", "requested": "NPU", "prompts": [_prompt(900.0, 5.0)]},  # not CPU: skipped
                {"device": "CPU", "requested": "CPU", "fallback": None,
                 "prompts": [_prompt(500.0, 20.0), _prompt(30.0, tps)]}]  # first prompt = warm-up: skipped
        fsutil.write_json(m / "smoke.json", {"status": "passed", "runs": runs, "peak_rss_mb": 700.0})
        files = {"model.onnx": 1_000, "model.onnx.data": wbytes} if name.startswith("ort") else ["openvino_model.bin"]
        fsutil.write_json(m / "export.json", {"stage": f"export@tiny-{name}", "wall_s": 6.5, "peak_rss_mb": 950.0,
                                              "export": {"files": files}})
        if name.startswith("ov"):
            art = tmp_path / "artifacts" / "tiny" / name
            art.mkdir(parents=True)
            (art / "openvino_model.bin").write_bytes(b"\0" * wbytes)
            (art / "openvino_model.xml").write_bytes(b"\0" * 1_000)
    fsutil.write_json(tmp_path / "metrics" / "tiny" / "ir-fp16" / "export.json",
                      {"stage": "ir@tiny", "wall_s": 15.2, "peak_rss_mb": 1325.0})
    return tmp_path


def test_rows_carry_performance(project):
    report.run(GATE, VARIANTS, {"tiny": list(VARIANTS)}, project / "metrics", project / "reports" / "quality.json")
    out = json.loads((project / "reports" / "quality.json").read_text())
    rows = {r["variant"]: r for r in out["rows"]}
    assert (rows["ov-int4"]["size_bytes"], rows["ov-int4"]["size_mb"]) == (101_000, 0.101)  # every file in the dir
    assert rows["ov-int4"]["weights_bytes"] == 100_000
    assert rows["ort-cpu-int4"]["size_bytes"] == 81_000  # no artifact dir: export.json's file sizes
    assert rows["ort-cpu-int4"]["weights_bytes"] is None
    for name, r in rows.items():
        assert (r["ttft_ms"], r["tokens_per_s"], r["device"]) == (30.0, SYNTH[name][4], "CPU")
        assert (r["smoke_rss_mb"], r["quality_rss_mb"], r["export_wall_s"], r["export_rss_mb"]) == (700, 900, 6.5, 950)
    assert [e["stage"] for e in out["exports"]] == ["ir@tiny", "export@tiny-ov-fp16", "export@tiny-ov-int4",
                                                    "export@tiny-ort-cpu-int4"]
    assert out["misses"] == [] and all(r["status"] == "ok" for r in rows.values())


def test_decode_speed_names_the_fallback():
    smoke = {"runs": [{"device": "CPU", "fallback": "DirectML unavailable on Linux: CPU execution provider",
                       "prompts": [_prompt(70.0, 110.0)]}]}
    assert report.decode_speed(smoke) == {"ttft_ms": 70.0, "tokens_per_s": 110.0, "device": "CPU",
                                          "fallback": "DirectML unavailable on Linux: CPU execution provider"}
    assert report.decode_speed({"status": "failed", "runs": []}) is None


def test_html_page_and_charts(project):
    pytest.importorskip("matplotlib")
    table, misses = report.stage(_params(GATE), Layout(project))
    reports = project / "reports"
    page = (reports / "index.html").read_text()
    for name in VARIANTS:
        assert f"<td>{name}</td>" in page and f"tiny/{name}" in table
    for heading in ("logit cosine", "KL", "on disk MB", "TTFT ms", "decode tok/s", "export RSS MB"):
        assert f"<th>{heading}</th>" in page
    assert "ir@tiny" in page and "<table>" in page and "size_quality.png" in page and "size_speed.png" in page
    for png in ("size_quality.png", "size_speed.png"):
        data = (reports / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    plots = json.loads((reports / "plots.json").read_text())["rows"]
    assert {p["variant"] for p in plots} == set(VARIANTS) and all(p["size_mb"] > 0 for p in plots)


def test_html_is_written_before_the_gate_fails(project):
    pytest.importorskip("matplotlib")
    strict = QualityParams(thresholds={"int4": Thresholds(max_kl=0.4)})
    with pytest.raises(report.PipelineError, match="tiny/ort-cpu-int4: kl"):
        report.stage(_params(strict), Layout(project))
    page = (project / "reports" / "index.html").read_text()
    assert "1 threshold miss(es)" in page and 'class="miss"' in page


def test_every_configured_build_has_a_status_and_nothing_else_a_row(project):
    """Built rows carry numbers; a failed stage's record gives its row the reason (while the stage's metrics are
    missing or older); a variant the model leaves out is "not configured"; a model with no runs is "not built";
    metrics of a model not in params.yaml give no row. The report then fails naming what did not complete."""
    layout = Layout(project)
    (project / "metrics/tiny/ort-cpu-int4/export.json").unlink()  # as DVC leaves a failed export: outputs deleted
    fsutil.write_json(layout.failure("tiny", "ort-cpu-int4", "export"),
                      {"command": "aipc export tiny ort-cpu-int4", "error": "export tiny-ort-cpu-int4: refused"})
    shutil.copytree(project / "metrics/tiny", project / "metrics/gone")  # a model since removed from params.yaml
    builds = {"tiny": ["ov-int4", "ort-cpu-int4"], "new": list(VARIANTS)}
    with pytest.raises(PipelineError) as err:
        report.run(GATE, VARIANTS, builds, project / "metrics", project / "reports/quality.json",
                   html=project / "reports/index.html")
    assert "1 build(s) did not complete" not in (page := (project / "reports/index.html").read_text())
    assert "4 build(s) did not complete</b>:<br>tiny/ort-cpu-int4: aipc export tiny ort-cpu-int4: " in page
    assert str(err.value) == ("4 of 5 model x variant builds did not complete: tiny/ort-cpu-int4: aipc export tiny "
                              "ort-cpu-int4: export tiny-ort-cpu-int4: refused; new/ov-fp16: not built; new/ov-int4: "
                              "not built; new/ort-cpu-int4: not built")
    rows = {(r["model"], r["variant"]): r for r in json.loads((project / "reports/quality.json").read_text())["rows"]}
    assert set(rows) == {(m, v) for m in builds for v in VARIANTS}
    assert rows["tiny", "ov-fp16"]["status"] == "not configured" and rows["tiny", "ov-int4"]["status"] == "ok"
    assert rows["tiny", "ort-cpu-int4"]["status"] == "failed" and rows["new", "ov-int4"]["status"] == "not built"

    # Restored from DVC's run cache (no command ran, so the record stays): the newer metrics file outranks it.
    time.sleep(0.01)
    fsutil.write_json(project / "metrics/tiny/ort-cpu-int4/export.json", {"wall_s": 6.5})
    report.run(GATE, VARIANTS, {"tiny": ["ov-int4", "ort-cpu-int4"]}, project / "metrics", project / "r.json")


def _real_size():
    spec = importlib.util.spec_from_file_location("real_size", ROOT / "bench" / "real_size.py")
    real_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_size)
    return real_size


def _fetched_and_exported(tmp_path):
    metrics = tmp_path / "metrics" / "m"
    fetched = {"files": ["config.json", "model-00001-of-00002.safetensors"], "total_size": 2**30}
    fsutil.write_json(metrics / "source/fetch.json",
                      {"stage": "fetch@m", "wall_s": 56.0, "peak_rss_mb": 100.0, "fetch": fetched})
    exported = {"files": {"openvino_model.bin": 2**28, "openvino_model.xml": 2**20}, "phases": [["compress", 31.0]]}
    fsutil.write_json(metrics / "ov-int4/export.json", {"stage": "openvino-export@m-ov-int4", "wall_s": 37.0,
                                                         "peak_rss_mb": 512.0, "export": exported})


def test_real_size_table_reads_the_metrics_after_the_artifacts_are_gone(tmp_path):
    """bench/real_size.py deletes each route's multi-GB outputs as it goes; its table then takes the weights' bytes
    from the synthetic fetch record (whose `files` is a list of names) and each export's from its own record."""
    _fetched_and_exported(tmp_path)
    rows = _real_size().table(tmp_path, "m").splitlines()
    assert rows[2].startswith("| fetch@m | 56 s | 0.1 GB | 1.07 GB | 0.10 |")
    assert rows[3] == "| openvino-export@m-ov-int4 | 37 s | 0.5 GB | 1.07 GB | 0.50 | 0.27 GB | compress 31 s |"


def test_a_real_size_rerun_sets_the_last_runs_measurements_aside(tmp_path):
    """A rerun in the same directory starts its own table, and the last run's metrics and logs are moved, not
    deleted: `--dir <runs/time> --table` prints the same table as before."""
    real_size = _real_size()
    _fetched_and_exported(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "openvino.log").write_text("export: compress\n")
    before = real_size.table(tmp_path, "m")
    kept = real_size.set_aside(tmp_path)
    assert kept.parent == tmp_path / "runs"
    assert not any((tmp_path / p).exists() for p in ("metrics", "logs"))
    assert (kept / "logs" / "openvino.log").read_text() == "export: compress\n"
    assert real_size.table(kept, "m") == before
    assert real_size.set_aside(tmp_path) is None  # nothing of a run left to keep
