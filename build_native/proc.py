"""Running build tools: one-line failures with the log's path, version probes, the host, wheel metadata."""

from __future__ import annotations

import collections
import email.parser
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError

IS_WINDOWS = platform.system() == "Windows"


def cmake(minimum: tuple[int, int]) -> tuple[str, str]:
    """A cmake at least `minimum`: this venv's (PyPI `cmake`) first, then PATH's. Returns (path, version)."""
    found = []
    venv_cmake = Path(sys.executable).parent / ("cmake.exe" if IS_WINDOWS else "cmake")
    for candidate in dict.fromkeys(c for c in (str(venv_cmake) if venv_cmake.exists() else None,
                                               shutil.which("cmake")) if c):
        match = re.search(r"(\d+)\.(\d+)\.?(\d*)", first_line([candidate, "--version"]) or "")
        if match:
            found.append(f"{match.group(0)} at {candidate}")
            if (int(match.group(1)), int(match.group(2))) >= minimum:
                return candidate, match.group(0)
    want = ".".join(map(str, minimum))
    raise PipelineError(f"native: cmake >= {want} needed (found {', '.join(found) or 'none'}); "
                        f"pip install 'cmake>={want}' into this environment")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"native: the {name} package is not installed in this environment")
    return Path(spec.submodule_search_locations[0])


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PipelineError(f"native: git {args[0]} in {repo}: {last_line(proc.stderr) or 'failed'}")
    return proc.stdout.strip()


def step(name: str, cmd: list[str], logs: Path, **kwargs) -> dict:
    """Run one build step with its output in logs/<name>.log (and on stderr: builds take minutes to hours)."""
    log = logs / (re.sub(r"\W+", "-", name) + ".log")
    print(f"[native] {name} (log: {log})", file=sys.stderr)
    return {"name": name, "cmd": cmd, "seconds": run(cmd, what=name, log=log, echo=True, **kwargs), "log": str(log)}


def run(cmd: list[str], *, what: str, log: Path | None = None, echo: bool = False, cwd: Path | None = None,
         env: dict | None = None) -> float:
    """Run `cmd`; on failure raise one line (the last error-looking output line, and the log's path)."""
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=200)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                cwd=cwd, env=env)
    except OSError as e:
        raise PipelineError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from None
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") if log else open(os.devnull, "w") as sink:
        for line in proc.stdout:
            sink.write(line)
            tail.append(line)
            if echo:
                sys.stderr.write(line)
    rc = proc.wait()
    if rc != 0:
        errors = [line for line in tail if re.search(r"\berror\b|ERROR|FAILED|fatal", line)]
        cause = last_line("".join(errors[-1:]) or "".join(tail))[:300]
        raise PipelineError(f"{what} failed (exit {rc}): {cause}" + (f" (log: {log})" if log else ""))
    return round(time.perf_counter() - start, 2)


def shown(cmd: list[str], out: Path) -> list[str]:
    """The command as recorded: the staging dir shown as <out>, the interpreter as `python`."""
    return ["python" if c == sys.executable else c.replace(str(out), "<out>") for c in cmd]


def first_line(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines[0] if lines else None


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def host() -> dict:
    return {"system": platform.system(), "machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version()}


def requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
