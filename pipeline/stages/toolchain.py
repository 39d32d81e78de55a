"""`aipc toolchain`: the exporter versions each backend's artifacts are built with, as committed lock files.

    toolchain/<backend>.txt   the backend's lock_lines() (`name==version`; also a pip constraints file)

dvc.yaml's `<backend>-export` stages (and `ir`, for openvino) depend on their backend's file, so upgrading NNCF and
re-writing the lock reruns exactly the OpenVINO exports.

`--write` records what is installed; `--check` fails in one line naming the first package whose installed version
is not the locked one (CI and `make repro` run it before `dvc repro`, so an upgrade can't slip past the lock).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import backends
from pipeline.errors import PipelineError

DIR = "toolchain"
HEADER = ("# Exporter versions of the {backend} backend; dvc.yaml's exports depend on this file.\n"
          "# Written by `aipc toolchain --write` from the installed packages; checked by `aipc toolchain --check`.\n")


def render(backend: str) -> str:
    return HEADER.format(backend=backend) + "\n".join(backends.get(backend).lock_lines()) + "\n"


def _expected(root: Path) -> dict[Path, str]:
    return {Path(root) / DIR / f"{b}.txt": render(b) for b in backends.BACKENDS}


def write_locks(root: Path) -> list[Path]:
    """Write the locks; returns the files whose content changed (their exports are now stale for DVC)."""
    changed = []
    for path, text in _expected(root).items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def _parse(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[name.strip()] = version.strip()
        elif line.startswith("# ") and line.endswith(": not installed"):
            out[line[2:-len(": not installed")]] = None
    return out


def check_locks(root: Path) -> None:
    """Raise PipelineError naming the first lock file that is missing or the first package that drifted."""
    root = Path(root)
    for path, text in _expected(root).items():
        rel = path.relative_to(root).as_posix()
        if not path.is_file():
            raise PipelineError(f"{rel}: missing; run `aipc toolchain --write` and commit {DIR}/")
        if path.read_text() == text:
            continue
        locked, now = _parse(path.read_text()), _parse(text)
        for name in sorted(set(locked) | set(now)):
            if locked.get(name) != now.get(name):
                raise PipelineError(
                    f"{rel}: {name} is {now.get(name) or 'not installed'}, locked {locked.get(name) or 'absent'}; "
                    "install the locked version, or run `aipc toolchain --write` (its exports will rerun)"
                )
        raise PipelineError(f"{rel}: out of date; run `aipc toolchain --write`")


def stage(params, layout, write: bool = False, check: bool = False) -> None:
    """`aipc toolchain [--write | --check]`: print, record or check the locks."""
    if write and check:
        raise PipelineError("toolchain: --write and --check exclude each other")
    if write:
        changed = write_locks(layout.root)
        print("\n".join(f"wrote {p.relative_to(layout.root)}" for p in changed) or "toolchain/: up to date")
    elif check:
        check_locks(layout.root)
        print(f"{DIR}/: installed versions match the locks")
    else:
        for backend in backends.BACKENDS:
            print(render(backend), end="")
