"""Rebuild a model's artifacts (fetch, FP16 IR, reference, every export) in a scratch root and compare each with the
committed dvc.lock: which come out byte for byte as the lock says, on this machine or with other kernels.

    python bench/other_kernels.py [--model smollm2] [--kernels host|avx2]

--kernels avx2 (the default) stands in for another CPU vendor's: torch's AVX2 code paths and oneDNN's (torch's and
OpenVINO's) instead of the AVX-512 ones this machine would pick; --kernels host rebuilds with this machine's own (run
it on a machine of the other vendor than the lock's). Every export computes its own NNCF statistics (an empty cache).
Each artifact's line says whether its md5 (DVC's, for a directory) equals the lock's and what its release's
provenance says it should be: deterministic (must be equal) or machine-dependent (may differ within its bound: `aipc
verify` measures that). Exit 1 if a deterministic artifact differs. Only stages that make artifacts: smoke and
quality measure (they differ by nature), and OpenVINO's bf16 default cannot run on AVX2-only kernels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.layout import IR_FP16, REFERENCE, SOURCE, Layout  # noqa: E402
from pipeline.params import load  # noqa: E402
from pipeline.stages.package import machine_dependent  # noqa: E402

KERNELS = {"host": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def dvc_md5(path: Path) -> str:
    """DVC's md5 of a file, or of a directory (the md5 of its sorted [{md5, relpath}] listing, plus '.dir')."""
    def md5(p: Path) -> str:
        return hashlib.md5(p.read_bytes()).hexdigest()

    if path.is_file():
        return md5(path)
    entries = [{"md5": md5(p), "relpath": p.relative_to(path).as_posix()} for p in sorted(path.rglob("*"))
               if p.is_file()]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def locked(root: Path, model: str) -> dict[str, str]:
    lock = yaml.safe_load((root / "models" / model / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--kernels", choices=KERNELS, default="avx2")
    args = ap.parse_args()
    params = load(ROOT / "params.yaml")
    lock = locked(ROOT, args.model)
    names = [SOURCE, IR_FP16, REFERENCE, *params.variants_of(args.model)]
    scratch = Path(tempfile.mkdtemp(prefix=".aipc-verify-kernels-", dir=ROOT))
    env = {**os.environ, **KERNELS[args.kernels], "AIPC_STATISTICS_CACHE": str(scratch / "statistics")}
    there = Layout(scratch / "root")
    failed, rows = 0, []
    try:
        for name in names:
            command = {SOURCE: "fetch", IR_FP16: "ir", REFERENCE: "reference"}.get(name, "export")
            stage_args = [command, args.model] + ([name] if command == "export" else [])
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(there.root), *stage_args],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"aipc {' '.join(stage_args)} failed with {args.kernels} kernels")
            rel = f"artifacts/{args.model}/{name}"
            same = dvc_md5(there.artifact(args.model, name)) == lock.get(rel)
            bounded = name in params.variants and machine_dependent(params, name)
            kind = "machine-dependent" if bounded else "deterministic"
            verdict = "ok" if same or bounded else "FAIL"
            failed += verdict == "FAIL"
            rows.append((rel, "identical" if same else "differs", kind, verdict, seconds))
            print(f"{rel:<40} {rows[-1][1]:<10} {kind:<18} {verdict:<5} {seconds:6.1f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    same = sum(r[1] == "identical" for r in rows)
    print(f"\n{args.kernels} kernels on {_cpu()}: {same} of {len(rows)} artifacts identical to the committed lock; "
          f"{failed} deterministic one(s) differ")
    return 1 if failed else 0


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


if __name__ == "__main__":
    sys.exit(main())
