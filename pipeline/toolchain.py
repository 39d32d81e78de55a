"""`aipc toolchain`: the exporter versions each backend's artifacts are built with, as committed lock files.

    toolchain/openvino.txt      optimum-intel, nncf, openvino, ... as `name==version` (also a pip constraints file)
    toolchain/onnx_genai.txt    onnxruntime-genai, onnxruntime, onnx, ...
    toolchain/variant/<variant>.txt   a copy of its backend's lock, one per variant in params.yaml

dvc.yaml's `ir` stage depends on toolchain/openvino.txt and `export@<model>-<variant>` on
toolchain/variant/<variant>.txt (DVC cannot look up a variant's backend inside a matrix, but it can put the variant's
name in a path), so upgrading NNCF and re-writing the lock reruns exactly the OpenVINO exports.

`--write` records what is installed; `--check` fails in one line naming the first package whose installed version
is not the locked one (CI and `make repro` run it before `dvc repro`, so an upgrade can't slip past the lock).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import PipelineError

DIR = "toolchain"
# What each backend's export imports and whose version can change its bytes (the runtimes used by smoke/quality
# are not here: upgrading openvino-genai re-measures, it does not re-export).
LOCKS: dict[str, tuple[str, ...]] = {
    "openvino": ("optimum-intel", "optimum", "nncf", "openvino", "openvino-tokenizers", "sentencepiece", "transformers",
                 "torch"),
    "onnx_genai": ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "transformers", "torch"),
}
HEADER = ("# Exporter versions of the {backend} backend; dvc.yaml's exports depend on this file.\n"
          "# Written by `aipc toolchain --write` from the installed packages; checked by `aipc toolchain --check`.\n")


def installed(name: str) -> str | None:
    """The installed version without its local label: torch 2.13.0+cpu and a CUDA 2.13.0 trace the same graphs."""
    try:
        return importlib.metadata.version(name).split("+", 1)[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def render(backend: str, versions: Mapping[str, str | None] | None = None) -> str:
    if backend == "npu_library":
        # Its own environment, made from these pins by pipeline/npu_env/create.py: the pins are the lock.
        from pipeline.npu_env import create

        return HEADER.format(backend=backend) + "\n".join(sorted([create.LIBRARY, *create.REQUIREMENTS])) + "\n"
    versions = versions if versions is not None else {n: installed(n) for n in LOCKS[backend]}
    lines = [f"{n}=={versions[n]}" if versions.get(n) else f"# {n}: not installed" for n in sorted(LOCKS[backend])]
    return HEADER.format(backend=backend) + "\n".join(lines) + "\n"


def variant_file(root: Path, variant: str) -> Path:
    return Path(root) / DIR / "variant" / f"{variant}.txt"


def _expected(root: Path, variants: Mapping) -> dict[Path, str]:
    """Every lock file and the text it should hold given what is installed."""
    root = Path(root)
    out = {root / DIR / f"{b}.txt": render(b) for b in (*LOCKS, "npu_library")}
    for name, v in variants.items():
        out[variant_file(root, name)] = out[root / DIR / f"{v.backend}.txt"].replace(
            "# Exporter versions", f"# {name}: a copy of toolchain/{v.backend}.txt. Exporter versions", 1)
    return out


def write(root: Path, variants: Mapping) -> list[Path]:
    """Write the locks; returns the files whose content changed (their exports are now stale for DVC)."""
    changed = []
    expected = _expected(root, variants)
    stale = set((Path(root) / DIR / "variant").glob("*.txt")) - set(expected)
    for path, text in expected.items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    for path in stale:  # a variant removed from params.yaml
        path.unlink()
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


def check(root: Path, variants: Mapping) -> None:
    """Raise PipelineError naming the first lock file that is missing or the first package that drifted."""
    root = Path(root)
    for path, text in _expected(root, variants).items():
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


# ---- CLI (wired into pipeline/cli.py as `aipc toolchain`) -------------------------------------------------------


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("toolchain", help="print, --write or --check the exporter version locks in toolchain/")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="record the installed versions (exports they affect rerun)")
    g.add_argument("--check", action="store_true", help="fail naming a package whose installed version drifted")
    return s


def command(args: argparse.Namespace, params, root: Path) -> None:
    if args.write:
        changed = write(root, params.variants)
        print("\n".join(f"wrote {p.relative_to(root)}" for p in changed) or "toolchain/: up to date")
    elif args.check:
        check(root, params.variants)
        print(f"{DIR}/: installed versions match the locks")
    else:
        for backend in LOCKS:
            print(render(backend), end="")
