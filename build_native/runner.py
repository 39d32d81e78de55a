"""Our C++ OpenVINO runner (build_native/ov_runner): built into a reproducible wheel by scikit-build-core, installed
beside the openvino wheel it links against, and run on an IR (one JSON line per run)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from build_native import proc
from pipeline import fsutil
from pipeline.errors import PipelineError

RUNNER_CMAKE_MIN = (3, 16)
RUNNER_SRC = Path(__file__).resolve().parent / "ov_runner"


def build_runner(wheel_dir: Path, build_dir: Path) -> Path:
    """`pip wheel build_native/ov_runner` into `wheel_dir`; the wheel. No build isolation: it compiles against the
    openvino installed here (the runtime the binary will load) and needs no index. `build_dir` keeps CMake's tree
    between builds, so a rebuild recompiles only what changed."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    proc.cmake(RUNNER_CMAKE_MIN)
    if importlib.util.find_spec("scikit_build_core") is None:
        raise PipelineError("native: building ov_runner needs scikit-build-core in this environment "
                            "(a dependency of the project: pip install -e .)")
    wheel_dir, build_dir = Path(wheel_dir).resolve(), Path(build_dir).resolve()
    log = build_dir / "pip-wheel.log"
    proc.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", str(wheel_dir),
          "--config-settings", f"build-dir={build_dir}", str(RUNNER_SRC)], what="ov_runner wheel", log=log)
    wheels = sorted(wheel_dir.glob("aipc_ov_runner-*.whl"))
    if len(wheels) != 1:
        raise PipelineError(f"native: pip wheel left {len(wheels)} aipc_ov_runner wheels in {wheel_dir}; see {log}")
    # The binary needs exactly the openvino it was compiled against (the soname carries the patch release).
    installed = version("openvino")
    for spec in proc.requires(wheels[0]):
        req = Requirement(spec)
        if req.name == "openvino" and not req.specifier.contains(installed, prereleases=True):
            raise PipelineError(f"native: {RUNNER_SRC / 'pyproject.toml'} pins {req} but this environment has "
                                f"openvino {installed}; pin that release there")
    return wheels[0]


def install_runner(wheel: Path) -> Path:
    """pip install the runner's wheel into this environment; the installed binary. It must land beside openvino:
    its RPATH is $ORIGIN/../../openvino/libs."""
    from importlib.metadata import PackageNotFoundError, distribution

    proc.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(Path(wheel).resolve())],
         what="ov_runner install")
    try:
        package = Path(distribution("aipc-ov-runner").locate_file("aipc_ov_runner"))
    except PackageNotFoundError:
        raise PipelineError(f"native: pip installed {Path(wheel).name} but aipc-ov-runner is not importable") from None
    binary = package / "bin" / ("ov_runner.exe" if proc.IS_WINDOWS else "ov_runner")
    if not binary.is_file():
        raise PipelineError(f"native: {binary} is missing after installing {Path(wheel).name}")
    site = proc.package_dir("openvino").parent
    if package.parent.resolve() != site.resolve():
        raise PipelineError(f"native: aipc-ov-runner went to {package.parent} but openvino is in {site}; "
                            "the binary finds openvino's libraries only beside it")
    return binary


def runner_wheel(out: Path, build_dir: Path) -> dict:
    """Stage `runner_wheel`: the runner's wheel in `out` (artifacts/native/ov_runner) with its sha256 manifest,
    replaced atomically. The wheel is reproducible (scikit-build-core `wheel.reproducible`), so the out is too."""
    from importlib.metadata import version

    start = time.perf_counter()
    with fsutil.staged_dir(out) as tmp:
        wheel = build_runner(tmp, build_dir)
        files = fsutil.write_manifest(tmp)
    return {"wheel": wheel.name, "sha256": files[wheel.name], "size_bytes": (Path(out) / wheel.name).stat().st_size,
            "build_s": round(time.perf_counter() - start, 2), "build_dir": str(Path(build_dir).resolve()),
            "scikit-build-core": version("scikit-build-core")}


def runner_wheel_file(wheel_dir: Path) -> Path:
    """The wheel that stage `runner_wheel` left in `wheel_dir`, checked against its manifest."""
    fsutil.verify_manifest(wheel_dir)
    wheels = sorted(Path(wheel_dir).glob("aipc_ov_runner-*.whl"))
    if len(wheels) != 1:
        raise PipelineError(f"native: expected one aipc_ov_runner wheel in {wheel_dir}, found {len(wheels)}")
    return wheels[0]


def runner_json(binary: Path, ir_dir: Path, ids: list[int] | None = None, n: int = 16, *, text: str | None = None,
                detokenize: bool = False, eos: tuple[int, ...] = (), device: str = "CPU",
                properties: dict[str, str] | None = None) -> dict:
    """Run the runner once; its one-line JSON record (prompt_ids, tokens, text, ttft_ms, tokens_per_s)."""
    cmd = [str(binary), str(ir_dir), "--max-new-tokens", str(n), "--device", device]
    if ids:
        cmd += ["--ids", ",".join(str(int(i)) for i in ids)]
    if text is not None:
        cmd += ["--text", text]
    if text is not None or detokenize:
        cmd += ["--tokenizers-ext", str(tokenizers_extension())]
    if eos:
        cmd += ["--eos", ",".join(str(int(i)) for i in eos)]
    for key, value in (properties or {}).items():
        cmd += ["--prop", f"{key}={value}"]
    env = dict(os.environ)
    if proc.IS_WINDOWS:  # no RPATH on Windows: the wheel's DLLs must be on PATH
        env["PATH"] = f"{proc.package_dir('openvino') / 'libs'}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
    if done.returncode != 0:
        message = proc.last_line(done.stderr or done.stdout).removeprefix("ov_runner: error: ")
        message = re.sub(r"Exception from \S+:\d+:\s*", "", message)  # OpenVINO's source locations, one per layer
        raise PipelineError(f"ov_runner on {ir_dir}: {message or f'exit {done.returncode}'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_runner(binary: Path, ir_dir: Path, ids: list[int], n: int, **options) -> list[int]:
    """Greedy-decode `n` tokens after prompt `ids` with the native runner; the generated ids."""
    return runner_json(binary, ir_dir, ids, n, **options)["tokens"]


def tokenizers_extension() -> Path:
    """The openvino_tokenizers extension library (custom ops of openvino_tokenizer.xml / openvino_detokenizer.xml)."""
    import openvino_tokenizers

    return Path(openvino_tokenizers._ext_path)
