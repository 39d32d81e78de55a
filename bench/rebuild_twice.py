"""Rebuild the default exports from scratch twice and compare the sha256 of every released file.

    python bench/rebuild_twice.py [--variants ov-int4 ort-cpu-int4 ...] [--keep DIR] [--json OUT]

Each build is a fresh copy of this project (code, dvc.yaml, params.yaml; no dvc.lock, no DVC cache) in its own
temp directory, so an absolute path that leaks into an artifact shows up as a difference; the second runs as if on
another machine (another HOME, TMPDIR and download cache, and another hostname via `unshare --uts` where allowed). Each runs
`dvc repro <backend>-export@<model>-<variant>` for every default variant (fetch -> ir -> export), then `package.run` with
this checkout's metrics/ (so the model cards are built from the same measurements). It prints, per released file,
whether the two builds are bit-identical, and for each file that differs where it differs (first differing line
or byte, JSON keys, ONNX metadata). It also says whether build 1 matches this checkout's artifacts/ (an earlier
build, possibly with other versions), for information. Exit status 1 when any released file differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import dvcfiles, fsutil, params as params_mod  # noqa: E402
from pipeline.gate import limits_for  # noqa: E402
from pipeline.layout import SOURCE, Layout  # noqa: E402
from pipeline.stages import package  # noqa: E402
from tests import project  # noqa: E402


def build(dest: Path, model: str, variants: list[str], other_machine: bool = False) -> dict[str, dict[str, str]]:
    """Fresh project in `dest`, exports rebuilt by dvc, releases packaged; {variant: {file: sha256}}. With
    `other_machine`, dvc runs with another HOME, TMPDIR and download cache, and under another hostname where
    `unshare --uts` is allowed (root on Linux)."""
    project.make(dest)
    t0 = time.monotonic()
    params = params_mod.load(dest / "params.yaml")
    targets = [dvcfiles.address(params, f"{params.variants[v].backend}-export@{model}-{v}") for v in variants]
    if other_machine:
        env = {"HOME": str(dest / "home"), "TMPDIR": str(dest / "tmp"), "AIPC_CACHE": str(dest / "aipc-cache")}
        for d in env.values():
            Path(d).mkdir()
        cmd = [str(project.BIN / "dvc"), "repro", *targets]
        if shutil.which("unshare") and project.run(dest, "unshare", "--uts", "true", check=False).returncode == 0:
            cmd = ["unshare", "--uts", "sh", "-c", 'hostname rebuild-elsewhere && exec "$@"', "sh", *cmd]
        project.run(dest, *cmd, extra_env=env)
    else:
        project.dvc(dest, "repro", *targets)
    print(f"  {dest.name}: exports rebuilt in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    layout = Layout(dest)
    out = {}
    for v in variants:
        limits = limits_for(params.quality, v, params.variants[v])
        metrics = ROOT / "metrics" / model / v  # the same measurements for both builds
        rel = dest / "releases" / model / v
        # export.json must be this build's (it names the versions used); smoke/quality come from the checkout.
        mdir = dest / "metrics" / model / v
        for kind in ("smoke", "quality"):
            if (metrics / f"{kind}.json").is_file():
                shutil.copy2(metrics / f"{kind}.json", mdir / f"{kind}.json")
        package.run(model, v, params.variants[v], layout.artifact(model, v), layout.artifact(model, SOURCE), mdir, rel,
                    thresholds=limits.model_dump() if limits else None)
        out[v] = {n: m["sha256"] for n, m in package.verify(rel)["files"].items()}
    out["source"] = fsutil.hash_tree(layout.artifact(model, SOURCE))
    return out


def cause(a: Path, b: Path) -> str:
    """Where two versions of a file differ, as one line."""
    da, db = a.read_bytes(), b.read_bytes()
    if len(da) != len(db):
        size = f"sizes {len(da)} vs {len(db)}; "
    else:
        size = ""
    if a.suffix == ".json":
        ja, jb = json.loads(da), json.loads(db)
        keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else []
        return f"{size}JSON keys differ: {', '.join(keys[:8]) or '(order/format)'}"
    if a.suffix == ".onnx":
        import onnx

        ma, mb = onnx.load(str(a), load_external_data=False), onnx.load(str(b), load_external_data=False)
        fields = [f for f in ("producer_name", "producer_version", "doc_string", "domain", "model_version")
                  if getattr(ma, f) != getattr(mb, f)]
        if fields:
            return f"{size}ONNX {', '.join(f'{f}: {getattr(ma, f)!r} vs {getattr(mb, f)!r}' for f in fields)}"
        na = [n.name for n in ma.graph.node]
        nb = [n.name for n in mb.graph.node]
        return f"{size}ONNX graph differs ({'same' if na == nb else 'different'} node order)"
    try:
        la, lb = da.decode().splitlines(), db.decode().splitlines()
        for i, (x, y) in enumerate(zip(la, lb)):
            if x != y:
                return f"{size}line {i + 1}: {x.strip()[:100]!r} vs {y.strip()[:100]!r}"
        return f"{size}one is a prefix of the other"
    except UnicodeDecodeError:
        n = next((i for i, (x, y) in enumerate(zip(da, db)) if x != y), min(len(da), len(db)))
        diff = sum(x != y for x, y in zip(da, db))
        return f"{size}binary: first differing byte at {n}, {diff} bytes differ"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--variants", nargs="*", default=None)
    ap.add_argument("--keep", type=Path, help="build here (kept) instead of a temp dir")
    ap.add_argument("--json", type=Path, help="write the comparison here")
    args = ap.parse_args(argv)
    params = params_mod.load(ROOT / "params.yaml")
    model = args.model or next(iter(params.models))
    variants = args.variants or list(params.variants)

    work = args.keep or Path(tempfile.mkdtemp(prefix="rebuild-twice-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        builds = []
        for i in (1, 2):
            dest = work / f"build{i}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            print(f"build {i}: {dest}", file=sys.stderr)
            builds.append(build(dest, model, variants, other_machine=i == 2))
        report: dict[str, list] = {"identical": [], "different": [], "vs_checkout": []}
        for group in ["source", *variants]:
            a, b = builds[0][group], builds[1][group]
            base = (lambda i: work / f"build{i}" / "artifacts" / model / SOURCE) if group == "source" else \
                (lambda i: work / f"build{i}" / "releases" / model / group)
            for name in sorted(set(a) | set(b)):
                key = f"{group}/{name}"
                if a.get(name) == b.get(name):
                    report["identical"].append(key)
                    continue
                why = "only in one build" if name not in a or name not in b else cause(base(1) / name, base(2) / name)
                report["different"].append({"file": key, "cause": why})
            # For information: build 1 against this checkout's artifacts (an earlier build).
            if group != "source":
                mine = ROOT / "artifacts" / model / group
                if mine.is_dir():
                    theirs = fsutil.hash_tree(mine)
                    same = [n for n in theirs if a.get(n) == theirs[n]]
                    report["vs_checkout"].append({"variant": group, "identical": len(same), "files": len(theirs),
                                                  "differ": sorted(set(theirs) - set(same))})
        print(f"\n{len(report['identical'])} released/source files bit-identical across the two rebuilds:")
        for key in report["identical"]:
            print(f"  = {key}")
        print(f"{len(report['different'])} differ:")
        for d in report["different"]:
            print(f"  ! {d['file']}: {d['cause']}")
        print("build 1 vs this checkout's artifacts/ (an earlier build):")
        for r in report["vs_checkout"]:
            print(f"  {r['variant']}: {r['identical']}/{r['files']} identical"
                  + (f"; differ: {', '.join(r['differ'])}" if r["differ"] else ""))
        if args.json:
            fsutil.write_json(args.json, report)
        return 1 if report["different"] else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
