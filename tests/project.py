"""A throw-away copy of this project (code, dvc.yaml, models/stages.yaml, DVC config) with its own params, for running
`dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.errors import PipelineError
from pipeline import dvcfiles
from pipeline.layout import STAGES
from pipeline.params import load

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    # dvc runs each stage's `aipc ...` through the shell: the venv's bin must be on PATH.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def make(dest: Path, params: dict | None = None) -> Path:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in tracked.splitlines():
        if rel.startswith(("pipeline/", "build_native/", "toolchain/", ".dvc/", "dvc.yaml", ".dvcignore", "params.yaml",
                           STAGES, ".gitignore")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:  # what `aipc repro` writes first: each model's dvc.yaml and build.yaml
        dvcfiles.sync(load(dest / "params.yaml"), dest)
    except PipelineError:
        pass  # invalid on purpose: the check stage or the command under test says why
    (dest / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def variants(names: list[str]) -> dict[str, dict]:
    """The repo's params.yaml variants called `names`, grouped by backend as params.yaml groups them (every backend's
    group present: models/stages.yaml has a group of stages over each)."""
    groups = yaml.safe_load((ROOT / "params.yaml").read_text())["variants"]
    return {backend: {n: v for n, v in group.items() if n in names} for backend, group in groups.items()}


def run(project: Path, *args: str, check: bool = True, extra_env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=project, env={**env(), **(extra_env or {})}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(project, str(BIN / "dvc"), *args, check=check)


def aipc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(project, str(BIN / "aipc"), *args, check=check)


def target(proj: Path, name: str) -> str:
    """`dvc repro`'s address of stage `name` in `proj` (models/<model>/dvc.yaml:<name> for a model's stage)."""
    return dvcfiles.address(load(proj / "params.yaml"), name)
