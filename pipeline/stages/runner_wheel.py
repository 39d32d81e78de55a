"""Stage `runner_wheel`: our C++ OpenVINO runner (build_native/ov_runner) as a reproducible wheel."""

from __future__ import annotations

from build_native import runner as ov_runner
from pipeline import fsutil
from pipeline.layout import NATIVE
from pipeline.record import measured


def stage(params, layout) -> dict:
    """`aipc runner-wheel`: the C++ runner's wheel into artifacts/native/ov_runner."""
    with measured("runner_wheel") as rec:
        rec["build"] = ov_runner.runner_wheel(layout.root / "artifacts" / NATIVE / "ov_runner",
                                              layout.root / "build_native" / "out" / "ov_runner")
    fsutil.write_json(layout.root / "metrics" / NATIVE / "ov_runner.json", rec)
    return rec
