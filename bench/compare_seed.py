"""Time the seed's own export commands, one by one, against our `dvc repro --force` of the same variants.

    python bench/compare_seed.py PROJECT [--model smollm2]

Seed (each a fresh process, into a temp dir):
  a) optimum-cli export openvino --task text-generation-with-past --weight-format fp16
  b) optimum-cli export openvino ... --weight-format int4 --group-size 128 --ratio 0.6 --sym
     --group-size-fallback adjust
  c) python -m onnxruntime_genai.models.builder -p int4 -e cpu
Ours, in PROJECT (it rewrites that project's artifacts, metrics and dvc.lock files: give it a scratch copy):
  dvc repro --force --single-item models/<model>/dvc.yaml:{ir@<model>, openvino-export@<model>-ov-fp16,
  openvino-export@<model>-ov-int4, onnx_genai-export@<model>-ort-cpu-int4}
(--single-item: --force alone would also re-run fetch.) A `dvc status` first, untimed, so DVC's hash cache of the
source checkpoint is warm and the timing is the stages', not a one-off rehash of a freshly copied tree.
Prints each command's wall time and peak RSS, both totals, their ratio, and the 1-minute load average at start and end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # optimum-cli and dvc live beside this interpreter (the project's venv)


def seed_commands(src: Path, out: Path) -> list[tuple[str, list[str]]]:
    cli = [str(BIN / "optimum-cli"), "export", "openvino", "--model", str(src), "--task", "text-generation-with-past"]
    return [
        ("seed ov fp16", [*cli, "--weight-format", "fp16", str(out / "ov-fp16")]),
        ("seed ov int4", [*cli, "--weight-format", "int4", "--group-size", "128", "--ratio", "0.6", "--sym",
                          "--group-size-fallback", "adjust", str(out / "ov-int4")]),
        ("seed ort int4 cpu", [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src),
                               "-o", str(out / "ort-cpu-int4"), "-p", "int4", "-e", "cpu",
                               "-c", str(out / "builder-cache")]),
    ]


def ours_command(model: str) -> list[str]:
    stages = [f"ir@{model}", f"openvino-export@{model}-ov-fp16", f"openvino-export@{model}-ov-int4",
              f"onnx_genai-export@{model}-ort-cpu-int4"]
    return [str(BIN / "dvc"), "repro", "--force", "--single-item", *(f"models/{model}/dvc.yaml:{s}" for s in stages)]


def timed(label: str, cmd: list[str], cwd: Path | None = None) -> float:
    """Run `cmd`; print its wall time and peak RSS (the largest of the process and everything it waited for, as
    GNU time reports it: for `dvc repro`, its largest stage)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{label} failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
    print(f"  {label:<20} {wall:7.1f} s  peak RSS {usage.ru_maxrss / 2**20:5.1f} GB", flush=True)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path, help="project dir to run `dvc repro --force` in (a scratch copy)")
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    project = args.project.resolve()
    src = project / "artifacts" / args.model / "source"
    if not (src / "config.json").is_file():
        sys.exit(f"{src}: no checkpoint; run `aipc repro fetch@{args.model}` first")

    load0 = os.getloadavg()[0]
    print(f"load average (1 min) at start: {load0:.2f} on {os.cpu_count()} cores", flush=True)
    print("seed commands:")
    with tempfile.TemporaryDirectory(prefix="seed-") as tmp:
        seed = sum(timed(label, cmd) for label, cmd in seed_commands(src, Path(tmp)))
    print(f"  {'total':<20} {seed:7.1f} s")

    print(f"ours ({project}):")
    subprocess.run([str(BIN / "dvc"), "status"], cwd=project, stdout=subprocess.DEVNULL, check=False)
    ours = timed("dvc repro --force", ours_command(args.model), cwd=project)
    load1 = os.getloadavg()[0]
    print(f"\nseed {seed:.1f} s, ours {ours:.1f} s: ours / seed = {ours / seed:.2f} (seed / ours = {seed / ours:.2f})")
    print(f"load average (1 min) at end: {load1:.2f}")


if __name__ == "__main__":
    main()
