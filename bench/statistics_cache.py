"""What NNCF's statistics cache saves: one data-aware export of a model with an empty statistics cache (NNCF runs
the FP16 IR on the calibration set, then compresses) and again with the cache it left (NNCF loads the statistics).
Whole `aipc export` processes in a scratch copy of the project's layout (artifacts/<model>/{source,ir-fp16}
hard-linked), never touching artifacts/ or the real cache; the two IRs must be byte-identical.

    python bench/statistics_cache.py [--model smollm2] [--variant ov-int4-calib] [--runs 2]

Prints each run's wall time and NNCF's own compress time (export.json), the ratio and the load average.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def export(scratch: Path, model: str, variant: str, cache: Path) -> tuple[float, dict]:
    shutil.rmtree(scratch / "artifacts" / model / variant, ignore_errors=True)
    env = {**os.environ, "AIPC_STATISTICS_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run([BIN / "aipc", "--root", scratch, "--params", ROOT / "params.yaml", "export", model, variant],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    record = json.loads((scratch / "metrics" / model / variant / "export.json").read_text())["export"]
    return wall, record["calibration"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variant", default="ov-int4-calib")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aipc-stats-bench-") as tmp:
        scratch, cache = Path(tmp) / "project", Path(tmp) / "statistics"
        for name in ("source", "ir-fp16"):
            shutil.copytree(ROOT / "artifacts" / args.model / name, scratch / "artifacts" / args.model / name,
                            copy_function=os.link)
        cold, warm = [], []
        for run in range(args.runs):
            shutil.rmtree(cache, ignore_errors=True)
            wall, rec = export(scratch, args.model, args.variant, cache)
            assert not rec["statistics_reused"]
            cold.append((wall, rec["compress_seconds"]))
            first = scratch / "first.bin"
            shutil.copy(scratch / "artifacts" / args.model / args.variant / "openvino_model.bin", first)
            wall, rec = export(scratch, args.model, args.variant, cache)
            assert rec["statistics_reused"]
            warm.append((wall, rec["compress_seconds"]))
            same = filecmp.cmp(first, scratch / "artifacts" / args.model / args.variant / "openvino_model.bin",
                               shallow=False)
            print(f"run {run + 1}: empty cache {cold[-1][0]:.1f} s (NNCF {cold[-1][1]:.1f} s), warm cache "
                  f"{warm[-1][0]:.1f} s (NNCF {warm[-1][1]:.1f} s); weights identical: {same}")
        best = lambda xs, i: min(x[i] for x in xs)  # noqa: E731
        print(f"best of {args.runs}: export {best(cold, 0):.1f} s -> {best(warm, 0):.1f} s "
              f"(x{best(warm, 0) / best(cold, 0):.2f}); NNCF {best(cold, 1):.1f} s -> {best(warm, 1):.1f} s "
              f"(x{best(warm, 1) / best(cold, 1):.2f}); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
