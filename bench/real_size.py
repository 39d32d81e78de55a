"""Every route at real size: a synthetic Phi-3 checkpoint (exact published config, seeded random BF16 weights) through
`dvc repro`, one stage at a time, and the table README's "At real size" shows.

    python bench/real_size.py CONFIG [--dir DIR] [--routes openvino,onnx_genai] [--variants ov-int4,...]
                                     [--until package|smoke|smoke-package|export] [--keep]
    python bench/real_size.py CONFIG --dir DIR --table      # print the table of a finished run again

CONFIG is one of pipeline/sources/configs/ (phi-3-mini-4k-instruct, phi-3-mini-128k-instruct,
phi-3.5-mini-instruct, phi-3-medium-4k-instruct, phi-4-mini-instruct, phi-4). DIR (default /tmp/aipc-real-size/CONFIG) becomes a clone of this
checkout with params.yaml naming only that model and the chosen routes' variants; stages run with this checkout's
venv and the clone's code, through `aipc repro` (builds.yaml, then `dvc repro --keep-going`). Each route's package
stages are the targets, so fetch, ir, reference, export, smoke and quality run on the way (DVC runs one stage at a
time); `--until smoke` stops at the smoke stages (no reference, quality or package); `--until smoke-package` then runs
`aipc package` of each variant by hand (a synthetic model is packaged ungated; DVC's package stage would wait on the
reference and quality, which Phi-3-medium's size puts out of reach here); `--until export` runs only the exports.
Logs: DIR/logs/<route>.log. A rerun in the same DIR first moves the last run's metrics and logs to
DIR/runs/<time>/ (`--dir DIR/runs/<time> --table` prints its table again).

The table, from each stage's own metrics (metrics/<model>/**/*.json: wall_s, peak_rss_mb, phases): stage, wall,
peak RSS, the checkpoint's BF16 bytes (= its FP16 bytes), their ratio, bytes on disk of what the stage wrote, and
where the time went. Peak RSS is the stage process's ru_maxrss (GNU time's "Maximum resident set size"): it counts
mapped file pages too. Unless --keep, each route's multi-GB artifacts (and the DVC cache objects only they used) are
deleted when the route is done, so the next one has the disk, and the checkpoint and cache at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHORT = {"phi-3-mini-4k-instruct": "mini4k", "phi-3-mini-128k-instruct": "mini128k",
         "phi-3.5-mini-instruct": "mini35", "phi-3-medium-4k-instruct": "medium4k",
         "phi-4-mini-instruct": "phi4mini", "phi-4": "phi4"}
ROUTES = ("openvino", "onnx_genai", "npu_library", "openvino_ep")  # openvino_ep after the IRs it wraps


def setup(config: str, project: Path, routes: list[str], only: list[str]) -> str:
    if not (project / ".git").is_dir():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(project)], check=True)
    else:  # a clone from an earlier run: this checkout's code, not the code it was cloned at
        subprocess.run(["git", "-C", str(project), "fetch", "--quiet", str(ROOT), "HEAD"], check=True)
        subprocess.run(["git", "-C", str(project), "reset", "--quiet", "--hard", "FETCH_HEAD"], check=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = SHORT[config]
    params["models"] = {model: {"source": "synthetic", "id": config, "revision": "seed:0"}}
    params["variants"] = {b: ({n: v for n, v in group.items() if not only or n in only} if b in routes else {})
                          for b, group in params["variants"].items()}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_aside(project)
    for path in [project / "dvc.lock", project / "reports"] + [
            p for p in (project / "models").iterdir() if p.is_dir()]:  # `aipc repro` writes the model's files anew
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return model


def set_aside(project: Path) -> Path | None:
    """Move an earlier run's metrics and logs to runs/<its end time>/, where `--dir` with `--table` prints its table
    again: the next run starts without them (its table is its own) and an hour of measurements is not lost to a
    rerun. Its lock files go (setup()); its outputs stay in the DVC cache, whose run cache restores what did not
    change."""
    found = [project / p for p in ("metrics", "logs") if (project / p).exists()]
    if not found:
        return None
    ended = max(p.stat().st_mtime for p in found)
    dest = project / "runs" / time.strftime("%Y%m%dT%H%M%S", time.gmtime(ended))
    dest.mkdir(parents=True, exist_ok=True)
    for path in found:
        path.rename(dest / path.name)
    return dest


def run(project: Path, model: str, routes: list[str], until: str = "package", keep: bool = True) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project),
           "DVC_NO_ANALYTICS": "1", "AIPC_NPU_VENV": os.environ.get("AIPC_NPU_VENV", str(ROOT / ".venv-npu"))}
    (project / "logs").mkdir(exist_ok=True)
    for route in routes:
        targets = [f"{route}-{until.removesuffix('-package')}@{model}-{v}" for v in params["variants"][route]]
        t0 = time.perf_counter()
        with open(project / "logs" / f"{route}.log", "w") as log:
            # aipc repro: writes models/<model>/{dvc.yaml,build.yaml}, then dvc repro of the targets (bare names)
            rc = subprocess.run([str(BIN / "aipc"), "repro", *targets], check=False, cwd=project, env=env,
                                stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"{route}: aipc repro of {len(targets)} {until} targets, rc {rc}, {time.perf_counter() - t0:.0f} s",
              flush=True)
        if until == "smoke-package" and rc == 0:
            for variant in params["variants"][route]:
                package_by_hand(project, env, model, variant)
        if not keep:
            drop_route(project, model, params["variants"][route], ir=route == "openvino")


def package_by_hand(project: Path, env: dict, model: str, variant: str) -> None:
    """`aipc package` of a smoked variant outside DVC (whose package stage waits on the reference and quality), timed by
    GNU time, its row written where the table reads the stages' metrics."""
    t0 = time.perf_counter()
    with open(project / "logs" / f"package-{variant}.log", "w") as log:
        done = subprocess.run(["/usr/bin/time", "-v", str(BIN / "aipc"), "package", model, variant], check=False,
                              cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    text = (project / "logs" / f"package-{variant}.log").read_text()
    print(f"aipc package {model} {variant}: rc {done.returncode}, {wall:.0f} s", flush=True)
    if done.returncode == 0:
        rss_kb = int(text.split("Maximum resident set size (kbytes):")[1].split()[0])
        record = {"stage": f"aipc package {model} {variant} (by hand)", "wall_s": round(wall, 2),
                  "peak_rss_mb": round(rss_kb / 1024, 1)}
        (project / "metrics" / model / variant / "package.json").write_text(json.dumps(record, indent=2))


def drop_route(project: Path, model: str, variants, ir: bool) -> None:
    """Delete a finished route's artifacts and the DVC cache objects no workspace file links any more, so the next
    route has the disk (Phi-3-medium: 28 GB checkpoint + 28 GB FP16 IR + both INT4 exports would not fit in 74 GB).
    Its metrics stay, and with them the table."""
    for name in list(variants) + (["ir-fp16"] if ir else []):
        for tree in ("artifacts", "releases"):  # a release hard-links its artifact's files
            shutil.rmtree(project / tree / model / name, ignore_errors=True)
    for path in (project / ".dvc" / "cache").rglob("*"):
        # The cache type is hardlink: 1 link = no workspace copy. A directory's listing (.dir) never has one, and
        # DVC reruns a stage whose output's listing is missing from the cache.
        if path.is_file() and path.stat().st_nlink == 1 and path.suffix != ".dir":
            path.unlink()


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def table(project: Path, model: str) -> str:
    metrics = project / "metrics" / model
    source = project / "artifacts" / model / "source"
    weights = sum(p.stat().st_size for p in source.glob("*.safetensors")) if source.is_dir() else None
    if weights is None:  # artifacts already deleted: the synthetic fetch recorded the weights' bytes
        if not (metrics / "source/fetch.json").is_file():
            return f"no metrics in {metrics}: fetch did not finish (see {project / 'logs'})"
        weights = json.loads((metrics / "source/fetch.json").read_text())["fetch"]["total_size"]
    rows = ["| stage | wall | peak RSS | FP16 weights | RSS / weights | on disk | where the time went |",
            "|---|---|---|---|---|---|---|"]
    order = ["source/fetch", "ir-fp16/export", "reference/reference"]
    found = sorted(metrics.glob("*/*.json"), key=lambda p: (
        order.index(f"{p.parent.name}/{p.stem}") if f"{p.parent.name}/{p.stem}" in order else len(order),
        p.stem != "export", p.stem != "smoke", p.parent.name, p.stem))
    for path in found:
        rec = json.loads(path.read_text())
        if "peak_rss_mb" not in rec:
            continue
        stage = rec.get("stage") or f"{path.parent.name}/{path.stem}"
        rss = rec["peak_rss_mb"] * 2**20
        out = project / "artifacts" / model / path.parent.name
        disk = None
        if path.stem in ("export", "fetch", "reference"):  # a route's artifacts may be gone (--keep not given)
            written = (rec.get(path.stem) or {}).get("files")
            disk = _du(out) if out.exists() else sum(written.values()) if isinstance(written, dict) else None
        phases = rec.get("phases") or (rec.get("export") or {}).get("phases") or []
        went = ", ".join(f"{k} {v:.0f} s" for k, v in phases)
        if rec.get("streamed"):  # a reference whose weights did not fit in memory
            went += f"; {rec['streamed']}"
        d = (rec.get("context") or {}).get("derived")
        if d:  # the smoke's context run (pipeline/devicecost.py; bench/device_cost.py prints all of it)
            dec = d["decode"]
            went += (f"decode {dec['tokens_per_s']:.1f} tok/s" + (f" ({dec['fraction_of_bound']:.0%} of the bound)"
                     if "fraction_of_bound" in dec else "") + "; first token " + " / ".join(
                     f"{ms / 1000:.1f}" for ms in d["ttft_ms"].values()) + f" s at {', '.join(d['ttft_ms'])} tokens")
            if d["memory_bytes_per_token"]:
                went += f"; {d['memory_bytes_per_token'] / 1024:.0f} KiB/token; 16 GiB fits {d['fits'].get('16')}"
        rows.append(f"| {stage} | {rec['wall_s']:.0f} s | {rss / 1e9:.1f} GB | {weights / 1e9:.2f} GB | "
                    f"{rss / weights:.2f} | {f'{disk / 1e9:.2f} GB' if disk is not None else ''} | {went} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", choices=sorted(SHORT))
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--routes", default="openvino,onnx_genai", help=f"comma-separated, of {', '.join(ROUTES)}")
    ap.add_argument("--variants", default="", help="comma-separated: only these of the routes' variants")
    ap.add_argument("--until", choices=("package", "smoke", "smoke-package", "export"), default="package",
                    help="the last stage to run; smoke-package: smoke, then `aipc package` by hand (no reference, "
                         "no quality)")
    ap.add_argument("--table", action="store_true", help="only print the table of a finished run in --dir")
    ap.add_argument("--keep", action="store_true", help="keep the artifacts and DVC cache (many GB)")
    args = ap.parse_args()
    project = (args.dir or Path("/tmp/aipc-real-size") / args.config).resolve()
    routes = [r for r in args.routes.split(",") if r]
    if unknown := sorted(set(routes) - set(ROUTES)):
        sys.exit(f"--routes: unknown {', '.join(unknown)} (known: {', '.join(ROUTES)})")
    only = [v for v in args.variants.split(",") if v]
    known = {n for r in routes for n in yaml.safe_load((ROOT / "params.yaml").read_text())["variants"][r]}
    if unknown := sorted(set(only) - known):
        sys.exit(f"--variants: {', '.join(unknown)} not in the routes' variants ({', '.join(sorted(known))})")
    model = SHORT[args.config]
    if not args.table:
        project.mkdir(parents=True, exist_ok=True)
        setup(args.config, project, routes, only)
        run(project, model, routes, args.until, args.keep)
    print(table(project, model))
    if not args.table and not args.keep:
        for scratch in (project / "artifacts" / model, project / "releases", project / ".dvc" / "cache"):
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
