"""How much of a short stage is the stage's own work: `aipc export <model> ov-int4` against a bare script that does
only the work (import openvino and nncf, read the FP16 IR, compress it with the variant's options, save it), and
`aipc --help`. Whole processes, side by side, median of N runs each.

    python bench/lean_stages.py [--model smollm2] [--variant ov-int4] [--runs 5]

Needs the model's FP16 IR (aipc repro ir@<model>). The export writes into a scratch copy of the project's layout
(artifacts/<model>/{source,ir-fp16} are hard-linked), never into artifacts/. Prints each run, the medians, their
ratio and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE = """
import sys, openvino as ov, nncf
ir, out, ratio, group = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
model = ov.Core().read_model(ir + "/openvino_model.xml")
model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, ratio=ratio, group_size=group,
                              advanced_parameters=nncf.AdvancedCompressionParameters(
                                  group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
ov.save_model(model, out + "/openvino_model.xml", compress_to_fp16=False)
"""


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def scratch_project(dest: Path, model: str) -> None:
    dest.mkdir(parents=True)
    for rel in ("params.yaml", "pipeline/evalset"):
        src = ROOT / rel
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / rel)
    for name in ("source", "ir-fp16"):
        shutil.copytree(ROOT / "artifacts" / model / name, dest / "artifacts" / model / name, copy_function=os.link)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variant", default="ov-int4")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline import params as params_mod

    variant = params_mod.load(ROOT / "params.yaml").variants[args.variant]
    ir = ROOT / "artifacts" / args.model / "ir-fp16"
    if not (ir / "openvino_model.xml").is_file():
        sys.exit(f"{ir}: no FP16 IR; run `aipc repro ir@{args.model}` first")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    stage_s, bare_s, help_s = [], [], []
    with tempfile.TemporaryDirectory(prefix="lean-") as tmp:
        tmp = Path(tmp)
        scratch_project(tmp / "proj", args.model)
        out = tmp / "bare"
        for i in range(args.runs):  # interleaved, so that load on the machine hits both alike
            stage_s.append(timed([str(BIN / "aipc"), "export", args.model, args.variant], tmp / "proj", env))
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            bare_s.append(timed([sys.executable, "-c", BARE, str(ir), str(out), str(variant.ratio),
                                 str(variant.group_size)], tmp, env))
            help_s.append(timed([str(BIN / "aipc"), "--help"], tmp, env))
            print(f"run {i + 1}: aipc export {stage_s[-1]:.2f} s, bare {bare_s[-1]:.2f} s, aipc --help "
                  f"{help_s[-1]:.2f} s", file=sys.stderr)
    stage, bare, help_ = (statistics.median(x) for x in (stage_s, bare_s, help_s))
    print(f"aipc export {args.model} {args.variant}: median {stage:.2f} s over {args.runs} runs")
    print(f"bare import + read + compress + save:   median {bare:.2f} s")
    print(f"ratio: {stage / bare:.2f} (target <= 1.2)")
    print(f"aipc --help: median {help_:.2f} s (target <= 0.5)")
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
