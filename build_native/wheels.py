"""`mode: wheel`: pip downloads the execution provider's onnxruntime and onnxruntime-genai wheels
(`--only-binary=:all: --no-deps`; DirectML: the win_amd64 wheels, from any host), checks the pinned sha256s and that
the pair installs together."""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path

from build_native import proc
from build_native.params import PACKAGES, NativeParams
from pipeline.errors import PipelineError
from pipeline.wheels import check_pin, download, download_cmd


def fetch(native: NativeParams, out: Path) -> dict:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    w, ep = native.wheel, native.execution_provider
    ort_pkg, genai_pkg = PACKAGES[ep]
    pins = {ort_pkg: w.onnxruntime, genai_pkg: w.onnxruntime_genai}
    # DirectML wheels exist for Windows only (DESIGN.md); pip fetches them from any host given the target's tags.
    target = w.platform or ("win_amd64" if ep == "dml" and not proc.IS_WINDOWS else None)
    python_version = w.python_version or (f"{sys.version_info.major}{sys.version_info.minor}" if target else None)
    cmd = download_cmd([f"{name}=={version}" for name, version in pins.items()], out, platform=target,
                       python_version=python_version)
    print(f"[native] pip download {' '.join(cmd[-2:])}" + (f" for {target}" if target else ""), file=sys.stderr)
    start = time.perf_counter()
    download(cmd)
    seconds = round(time.perf_counter() - start, 2)

    wheels: dict[str, Path] = {}
    for whl in sorted(out.glob("*.whl")):
        wheels[str(canonicalize_name(parse_wheel_filename(whl.name)[0]))] = whl
    record_wheels = {}
    for name, version in pins.items():
        whl = wheels.get(name)
        if whl is None:
            raise PipelineError(f"native: pip download produced no wheel for {name}=={version}")
        pinned = w.sha256.get(name)
        digest = check_pin(whl, pinned, "params.yaml native")
        record_wheels[name] = {"version": version, "file": whl.name, "sha256": digest, "pinned": bool(pinned),
                               "requires": proc.requires(whl)}

    # The genai wheel names the onnxruntime it needs; pip install refuses a pair that does not meet it (e.g.
    # onnxruntime-genai-directml 0.13+ wants onnxruntime-directml >= 1.25.1, and PyPI's stops at 1.24.4).
    for spec in record_wheels[genai_pkg]["requires"]:
        req = Requirement(spec)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        if canonicalize_name(req.name) == ort_pkg and not req.specifier.contains(w.onnxruntime, prereleases=True):
            raise PipelineError(f"native: {genai_pkg}=={w.onnxruntime_genai} requires {req}, but params pin "
                                f"{ort_pkg}=={w.onnxruntime}; pip would refuse to install the pair")
    return {
        "mode": "wheel",
        "execution_provider": ep,
        "packages": record_wheels,
        "target": {"platform": target or "this machine", "python_version": python_version or "this interpreter"},
        "commands": [{"name": "pip download", "cmd": proc.shown(cmd, out), "seconds": seconds}],
        "host": proc.host(),
        # the version only: `pip --version` names the venv's path, which made two checkouts' builds differ
        "toolchain": {"pip": importlib.metadata.version("pip")},
    }
