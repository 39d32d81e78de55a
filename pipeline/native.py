"""Stage `build_native@<target>`: the native runtimes a Windows AI PC needs (onnxruntime + onnxruntime-genai, DirectML
where asked), either as pinned PyPI wheels or built from pinned source commits, plus our own C++ runner for
OpenVINO IRs.

    wheel   pip downloads the provider's two wheels (`--only-binary=:all: --no-deps`; DirectML: the win_amd64 wheels,
            from any host) into artifacts/native/<target>/, checks pinned sha256s and that the pair installs together.
    source  checks out each pinned commit (verified), builds onnxruntime (build.sh/.bat --build_shared_lib), stages its
            headers and libraries into an ORT_HOME (ort/include, ort/lib) as the seed's copy commands did, builds
            onnxruntime-genai against it (build.py --ort_home) and collects the wheel. `onnxruntime_from` also allows
            a genai-only build against a prebuilt onnxruntime, since onnxruntime alone takes hours.

Both modes write build-manifest.json: what ran (commands, durations), with what (versions, commits, toolchain) and
the sha256 of every output. DESIGN.md "Facts: native builds": DirectML builds are Windows-only, and no sources reach
CI, so CI runs `wheel` mode and the runner; `source` runs on a developer machine or a release runner.
"""

from __future__ import annotations

import collections
import email.parser
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline import fsutil
from pipeline.errors import PipelineError

BUILD_MANIFEST = "build-manifest.json"
# execution provider -> (onnxruntime package, onnxruntime-genai package) on PyPI
PACKAGES = {
    "cpu": ("onnxruntime", "onnxruntime-genai"),
    "dml": ("onnxruntime-directml", "onnxruntime-genai-directml"),
    "cuda": ("onnxruntime-gpu", "onnxruntime-genai-cuda"),
}
GENAI_CMAKE_MIN = (3, 28)  # measured (DESIGN.md); the runner needs far less
RUNNER_CMAKE_MIN = (3, 16)
RUNNER_SRC = Path(__file__).resolve().parents[1] / "build_native" / "ov_runner"
# OpenVINO on CPU in f32, for runner parity and the quality stage (backends/openvino.py): the CPU plugin otherwise
# picks bf16 (on CPUs with AVX512-BF16/AMX), an f16/u8 KV cache and dynamic int8 activations, each of which moves
# the numbers away from what the stored weights do and can flip a near-tie between two paths.
F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
IS_WINDOWS = platform.system() == "Windows"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# ---- params (the `native:` section of params.yaml, one entry per target) -------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GitSource(_Strict):
    """One pinned repository. `url` is cloned into work_dir/src/<name>; `path` is either a local checkout, used in
    place (it must sit at `commit` with no uncommitted changes), or a bare git dir, cloned from."""

    commit: str
    url: str | None = None
    path: Path | None = None
    # FetchContent name -> local source dir of a dependency (offline builds). Any entry also sets
    # FETCHCONTENT_FULLY_DISCONNECTED=ON, so a dependency left out fails instead of being downloaded silently.
    deps: dict[str, Path] = {}

    @field_validator("commit")
    @classmethod
    def _pinned(cls, v: str) -> str:
        if not _COMMIT.match(v):
            raise ValueError(f"commit {v!r} is not a 40-hex commit sha")
        return v

    @model_validator(mode="after")
    def _one_origin(self) -> GitSource:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of `url` (git URL) or `path` (local checkout or git dir)")
        return self


class SourceParams(_Strict):
    onnxruntime_genai: GitSource
    # Where genai's ORT_HOME comes from:
    #   build     build onnxruntime from `onnxruntime` (hours on 2 cores),
    #   headers   headers from the `onnxruntime` checkout + the library of the onnxruntime wheel installed here
    #             (Linux/macOS: genai dlopens it at run time; Windows would need onnxruntime.lib, which no wheel has),
    #   prebuilt  `ort_home` already holds include/ and lib/ (e.g. an onnxruntime release archive).
    onnxruntime_from: Literal["build", "headers", "prebuilt"] = "build"
    onnxruntime: GitSource | None = None
    ort_home: Path | None = None

    @model_validator(mode="after")
    def _ort(self) -> SourceParams:
        if self.onnxruntime_from == "prebuilt" and self.ort_home is None:
            raise ValueError("onnxruntime_from: prebuilt needs `ort_home` (a dir with include/ and lib/)")
        if self.onnxruntime_from != "prebuilt" and self.onnxruntime is None:
            raise ValueError(f"onnxruntime_from: {self.onnxruntime_from} needs `onnxruntime` (commit + url or path)")
        return self


class WheelParams(_Strict):
    onnxruntime: str  # version of the provider's onnxruntime package (PACKAGES)
    onnxruntime_genai: str
    sha256: dict[str, str] = {}  # package name -> expected sha256 of its wheel
    platform: str | None = None  # pip --platform; default win_amd64 for dml, else this machine
    python_version: str | None = None  # pip --python-version, e.g. "311"; default this interpreter

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            if not _SHA256.match(digest):
                raise ValueError(f"sha256 of {name} must be 64 lower-case hex digits")
        return v


class NativeParams(_Strict):
    mode: Literal["wheel", "source"] = "wheel"
    execution_provider: Literal["dml", "cpu", "cuda"]
    wheel: WheelParams | None = None
    source: SourceParams | None = None
    jobs: Annotated[int, Field(ge=1)] = 2
    ccache_dir: Path | None = None  # default: ccache's own; ignored when ccache is not installed
    work_dir: Path = Path("build_native/out")  # clones and build trees (kept between runs: incremental builds)

    @model_validator(mode="after")
    def _section(self) -> NativeParams:
        section = getattr(self, self.mode)
        if section is None:
            raise ValueError(f"mode: {self.mode} needs a `{self.mode}:` section")
        if self.wheel:
            valid = PACKAGES[self.execution_provider]
            for name in self.wheel.sha256:
                if name not in valid:
                    raise ValueError(f"wheel.sha256: {name!r} is not a {self.execution_provider} package "
                                     f"(valid: {', '.join(valid)})")
        return self


# ---- the stage -------------------------------------------------------------------------------------------------


def run(native: NativeParams, out: Path) -> dict:
    """Produce `out` (artifacts/native/<target>) atomically and return its build manifest."""
    out = Path(out)
    _preflight(native)  # every refusal happens here, before anything is downloaded, cloned or built
    start = time.perf_counter()
    with fsutil.staged_dir(out) as tmp:
        record = _wheels(native, tmp) if native.mode == "wheel" else _source(native, tmp, out.name)
        record["files"] = fsutil.hash_tree(tmp)
        record["seconds"] = round(time.perf_counter() - start, 2)
        fsutil.write_json(tmp / BUILD_MANIFEST, record)
    return record


def _preflight(native: NativeParams) -> None:
    ep = native.execution_provider
    if native.mode == "wheel":
        return
    if ep == "dml" and not IS_WINDOWS:
        raise PipelineError(
            f"native: DirectML builds need Windows (onnxruntime cmake/external/dml.cmake and onnxruntime-genai "
            f"cmake/check_dml.cmake refuse other systems), this is {platform.system()}; use mode: wheel here"
        )
    if ep == "cuda" and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        raise PipelineError("native: execution_provider cuda builds need CUDA_HOME pointing at a CUDA toolkit")
    src = native.source
    if shutil.which("git") is None:
        raise PipelineError("native: source mode needs git on PATH")
    _cmake(GENAI_CMAKE_MIN)
    for name, repo in (("onnxruntime-genai", src.onnxruntime_genai), ("onnxruntime", src.onnxruntime)):
        if repo is None:
            continue
        if repo.path is not None and not repo.path.is_dir():
            raise PipelineError(f"native: {name} path {repo.path} does not exist")
        for dep, path in repo.deps.items():
            if not Path(path).is_dir():
                raise PipelineError(f"native: {name} dependency {dep!r}: {path} is not a directory")
    if src.onnxruntime_from == "prebuilt" and not (src.ort_home / "include" / "onnxruntime_c_api.h").is_file():
        raise PipelineError(f"native: ort_home {src.ort_home} lacks include/onnxruntime_c_api.h")
    if src.onnxruntime_from == "headers":
        if IS_WINDOWS:
            raise PipelineError("native: onnxruntime_from: headers needs onnxruntime.lib on Windows, which the "
                                "onnxruntime wheel does not ship; use build or prebuilt")
        _wheel_ort_libs()


# ---- wheel mode ------------------------------------------------------------------------------------------------


def _wheels(native: NativeParams, out: Path) -> dict:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    w, ep = native.wheel, native.execution_provider
    ort_pkg, genai_pkg = PACKAGES[ep]
    pins = {ort_pkg: w.onnxruntime, genai_pkg: w.onnxruntime_genai}
    # DirectML wheels exist for Windows only (DESIGN.md); pip fetches them from any host given the target's tags.
    target = w.platform or ("win_amd64" if ep == "dml" and not IS_WINDOWS else None)
    python_version = w.python_version or (f"{sys.version_info.major}{sys.version_info.minor}" if target else None)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(out)]
    if python_version:
        cmd += ["--python-version", python_version]
    if target:
        cmd += ["--platform", target]
    cmd += [f"{name}=={version}" for name, version in pins.items()]
    print(f"[native] pip download {' '.join(cmd[-2:])}" + (f" for {target}" if target else ""), file=sys.stderr)
    seconds = _run(cmd, what="native: pip download")

    wheels: dict[str, Path] = {}
    for whl in sorted(out.glob("*.whl")):
        wheels[str(canonicalize_name(parse_wheel_filename(whl.name)[0]))] = whl
    record_wheels = {}
    for name, version in pins.items():
        whl = wheels.get(name)
        if whl is None:
            raise PipelineError(f"native: pip download produced no wheel for {name}=={version}")
        digest = fsutil.sha256_file(whl)
        pinned = w.sha256.get(name)
        if pinned and digest != pinned:
            raise PipelineError(f"native: {whl.name}: sha256 {digest[:12]}… but params pin {pinned[:12]}…; "
                                "the index served different bytes (or the pin is stale)")
        record_wheels[name] = {"version": version, "file": whl.name, "sha256": digest, "pinned": bool(pinned),
                               "requires": _requires(whl)}

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
        "commands": [{"name": "pip download", "cmd": _shown(cmd, out), "seconds": seconds}],
        "host": _host(),
        "toolchain": {"pip": _first_line([sys.executable, "-m", "pip", "--version"])},
    }


def _requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []


# ---- source mode -----------------------------------------------------------------------------------------------


def _source(native: NativeParams, out: Path, target: str) -> dict:
    src, ep = native.source, native.execution_provider
    work = native.work_dir.resolve()
    build = work / "build" / target
    logs = build / "logs"
    cmake, cmake_version = _cmake(GENAI_CMAKE_MIN)
    env, toolchain = _build_env(native, cmake, cmake_version)
    commands: list[dict] = []
    sources = {"onnxruntime-genai": _checkout("onnxruntime-genai", src.onnxruntime_genai, work, logs, commands)}

    # ORT_HOME at a stable path outside `out`: genai's build tree (and ccache) key on it, so a rebuild stays
    # incremental. It is copied into the artifact afterwards.
    ort_home = build / "ort"
    shutil.rmtree(ort_home, ignore_errors=True)
    if src.onnxruntime_from == "prebuilt":
        shutil.copytree(src.ort_home / "include", ort_home / "include")
        shutil.copytree(src.ort_home / "lib", ort_home / "lib", symlinks=True)
        sources["onnxruntime"] = {"prebuilt": str(src.ort_home)}
    else:
        sources["onnxruntime"] = _checkout("onnxruntime", src.onnxruntime, work, logs, commands)
        ort_src = Path(sources["onnxruntime"]["checkout"])
        if src.onnxruntime_from == "build":
            ort_build = build / "onnxruntime"
            cmd = _ort_build_cmd(native, ort_src, ort_build, cmake)
            commands.append(_step("onnxruntime build", cmd, logs, cwd=ort_src, env=env))
            libs = _built_ort_libs(ort_build / "Release")
        else:
            libs, wheel_version = _wheel_ort_libs()
            headers_version = sources["onnxruntime"].get("version") or ""
            if headers_version.split(".")[:2] != wheel_version.split(".")[:2]:
                raise PipelineError(f"native: onnxruntime headers are {headers_version or '?'} but the installed "
                                    f"onnxruntime wheel is {wheel_version}; pin the onnxruntime commit of that release")
            sources["onnxruntime"]["library_from_wheel"] = wheel_version
        _stage_ort_home(ort_src, libs, ort_home, ep)

    genai_src = Path(sources["onnxruntime-genai"]["checkout"])
    genai_build = build / "onnxruntime-genai"
    for stale in genai_build.rglob("*.whl"):  # so that what is collected below is this build's wheel
        stale.unlink()
    cmd = _genai_build_cmd(native, genai_src, genai_build, ort_home, cmake)
    commands.append(_step("onnxruntime-genai build", cmd, logs, cwd=genai_src, env=env))
    built = sorted(genai_build.rglob("*.whl"))
    if not built:
        raise PipelineError(f"native: the onnxruntime-genai build made no wheel under {genai_build}; see {logs}")
    (out / "wheels").mkdir()
    for whl in built:
        shutil.copy2(whl, out / "wheels" / whl.name)
    shutil.copytree(ort_home, out / "ort", symlinks=True)
    return {
        "mode": "source",
        "execution_provider": ep,
        "onnxruntime_from": src.onnxruntime_from,
        "sources": sources,
        "wheels": sorted(p.name for p in built),
        "commands": commands,
        "jobs": native.jobs,
        "host": _host(),
        "toolchain": toolchain,
        "work_dir": str(work),
    }


def _checkout(name: str, repo: GitSource, work: Path, logs: Path, commands: list[dict]) -> dict:
    """The pinned commit's work tree, verified: HEAD == commit, nothing uncommitted."""
    local = repo.path is not None and _git(repo.path, "rev-parse", "--is-bare-repository") == "false"
    if local:
        tree = repo.path.resolve()
    else:
        tree = work / "src" / name
        origin = repo.url or str(repo.path.resolve())
        if not (tree / ".git").exists():
            commands.append(_step(f"{name} clone", ["git", "clone", "--no-checkout", origin, str(tree)], logs))
        if _git(tree, "cat-file", "-t", repo.commit, check=False) != "commit":
            commands.append(_step(f"{name} fetch", ["git", "-C", str(tree), "fetch", origin, repo.commit], logs))
        cmd = ["git", "-C", str(tree), "-c", "advice.detachedHead=false", "checkout", "--force", "--detach",
               repo.commit]
        commands.append(_step(f"{name} checkout", cmd, logs))
        if (tree / ".gitmodules").exists():
            cmd = ["git", "-C", str(tree), "submodule", "update", "--init", "--recursive"]
            commands.append(_step(f"{name} submodules", cmd, logs))
    head = _git(tree, "rev-parse", "HEAD")
    if head != repo.commit:
        raise PipelineError(f"native: {name} at {tree} is {head[:12]}, params pin {repo.commit[:12]}; "
                            "check out the pinned commit or change the pin")
    dirty = _git(tree, "status", "--porcelain", "--untracked-files=no")
    if dirty:
        raise PipelineError(f"native: {name} at {tree} has uncommitted changes ({dirty.splitlines()[0].strip()}); "
                            "a pinned build needs a clean checkout")
    version = next((f.read_text().strip() for f in (tree / "VERSION_NUMBER", tree / "VERSION_INFO") if f.is_file()),
                   None)
    return {"commit": head, "origin": repo.url or str(repo.path), "checkout": str(tree), "in_place": local,
            "version": version, "deps": {k: str(v) for k, v in repo.deps.items()}}


def _cmake_defines(native: NativeParams, repo: GitSource, telemetry_option: str) -> list[str]:
    defines = [f"{telemetry_option}=OFF"]
    if shutil.which("ccache") and not IS_WINDOWS:  # the launcher variables are ignored by Visual Studio generators
        defines += ["CMAKE_C_COMPILER_LAUNCHER=ccache", "CMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    if repo.deps:
        defines.append("FETCHCONTENT_FULLY_DISCONNECTED=ON")
        defines += [f"FETCHCONTENT_SOURCE_DIR_{name.upper()}={Path(path).resolve()}"
                    for name, path in repo.deps.items()]
    return defines


def _generator() -> list[str]:
    # Ninja where it exists (fast no-op rebuilds, plays well with ccache); build.py's default (VS) on Windows.
    return ["--cmake_generator", "Ninja"] if shutil.which("ninja") and not IS_WINDOWS else []


def _ort_build_cmd(native: NativeParams, ort_src: Path, build_dir: Path, cmake: str) -> list[str]:
    script = ort_src / ("build.bat" if IS_WINDOWS else "build.sh")
    cmd = [str(script), "--config", "Release", "--build_shared_lib", "--parallel", str(native.jobs), "--skip_tests",
           "--build_dir", str(build_dir), "--cmake_path", cmake, "--skip_submodule_sync",
           "--compile_no_warning_as_error", *_generator()]
    if native.execution_provider == "dml":
        cmd.append("--use_dml")
    if native.execution_provider == "cuda":
        cmd += ["--use_cuda", "--cuda_home", os.environ.get("CUDA_HOME") or os.environ["CUDA_PATH"]]
    if not IS_WINDOWS and os.geteuid() == 0:
        cmd.append("--allow_running_as_root")  # build.py refuses root otherwise (containers, CI runners)
    defines = _cmake_defines(native, native.source.onnxruntime, "onnxruntime_USE_TELEMETRY")
    return cmd + ["--cmake_extra_defines", *defines]


def _genai_build_cmd(native: NativeParams, genai_src: Path, build_dir: Path, ort_home: Path, cmake: str) -> list[str]:
    # No `--parallel`: build.py passes it to `cmake --build` without a number, which means unbounded jobs for
    # make; CMAKE_BUILD_PARALLEL_LEVEL (set in _build_env) bounds it to `jobs` instead.
    cmd = [sys.executable, str(genai_src / "build.py"), "--config", "Release", "--ort_home", str(ort_home),
           "--build_dir", str(build_dir), "--skip_tests", "--cmake_path", cmake, *_generator()]
    if "--skip_examples" in (genai_src / "build.py").read_text(errors="replace"):
        cmd.append("--skip_examples")  # the examples expect ORT inside the source tree (ort/), which we never write
    if native.execution_provider == "dml":
        cmd.append("--use_dml")
    if native.execution_provider == "cuda":
        cmd += ["--use_cuda", "--cuda_home", os.environ.get("CUDA_HOME") or os.environ["CUDA_PATH"]]
    # The Python module and wheel must be built for this interpreter: build.py passes none, so pybind11 (and the
    # wheel target's `${PYTHON_EXECUTABLE} -m pip wheel`) otherwise take whatever python PATH finds first (found by
    # a real build: a pyenv shim for a python3.7 that was not installed, and configure failed).
    python = [f"{var}={sys.executable}" for var in ("PYTHON_EXECUTABLE", "Python_EXECUTABLE", "Python3_EXECUTABLE")]
    defines = ["ENABLE_TESTS=OFF", *python,
               *_cmake_defines(native, native.source.onnxruntime_genai, "ENABLE_TELEMETRY")]
    return cmd + ["--cmake_extra_defines", *defines]


def _built_ort_libs(release: Path) -> list[Path]:
    # Linux/macOS: build/Release/libonnxruntime*.so*|dylib; Windows (VS, multi-config): build/Release/Release/*.dll
    # and the import library. DirectML.dll is copied beside onnxruntime.dll by the --use_dml build.
    patterns = (["onnxruntime*.dll", "onnxruntime*.lib", "DirectML.dll"] if IS_WINDOWS
                else ["libonnxruntime*.so*", "libonnxruntime*.dylib"])
    where = release / "Release" if IS_WINDOWS else release
    libs = sorted({p for pattern in patterns for p in where.glob(pattern)})
    if not libs:
        raise PipelineError(f"native: the onnxruntime build left no library in {where}")
    return libs


def _wheel_ort_libs() -> tuple[list[Path], str]:
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("onnxruntime")
    try:
        ort_version = version("onnxruntime")
    except PackageNotFoundError:
        spec = None
    if spec is None:
        raise PipelineError("native: onnxruntime_from: headers needs the onnxruntime wheel installed (its library)")
    capi = Path(spec.submodule_search_locations[0]) / "capi"
    libs = sorted(p for p in capi.iterdir()
                  if p.name.startswith("libonnxruntime") and (".so" in p.name or p.suffix == ".dylib"))
    return libs, ort_version


def _stage_ort_home(ort_src: Path, libs: list[Path], ort_home: Path, ep: str) -> None:
    """The seed's copy commands, portably: the C/C++ API headers (include/onnxruntime/core/session/*.h, plus the
    DirectML provider factory for dml) into ort/include, the libraries into ort/lib."""
    (ort_home / "include").mkdir(parents=True)
    (ort_home / "lib").mkdir()
    headers = sorted((ort_src / "include" / "onnxruntime" / "core" / "session").glob("*.h"))
    if ep == "dml":
        headers.append(ort_src / "include" / "onnxruntime" / "core" / "providers" / "dml" / "dml_provider_factory.h")
    for h in headers:
        shutil.copy2(h, ort_home / "include" / h.name)
    for lib in libs:
        shutil.copy2(lib, ort_home / "lib" / lib.name, follow_symlinks=False)  # keep .so -> .so.1 -> .so.1.x links
    # The wheel ships only libonnxruntime.so.<version>; give the unversioned and soname links a linker would expect.
    versioned = [p.name for p in (ort_home / "lib").glob("libonnxruntime.so.*.*")]
    for alias in ("libonnxruntime.so", "libonnxruntime.so.1"):
        if versioned and not (ort_home / "lib" / alias).exists():
            (ort_home / "lib" / alias).symlink_to(versioned[0])


def _build_env(native: NativeParams, cmake: str, cmake_version: str) -> tuple[dict, dict]:
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(native.jobs))
    ccache = shutil.which("ccache") if not IS_WINDOWS else None
    if ccache and native.ccache_dir:
        env["CCACHE_DIR"] = str(native.ccache_dir.resolve())
    cxx = os.environ.get("CXX") or ("cl" if IS_WINDOWS else "c++")
    toolchain = {
        "cmake": {"path": cmake, "version": cmake_version},
        "compiler": _first_line([cxx] if IS_WINDOWS else [cxx, "--version"]),
        "ccache": {"version": _first_line([ccache, "--version"]), "dir": env.get("CCACHE_DIR")} if ccache else None,
        "ninja": _first_line(["ninja", "--version"]) if shutil.which("ninja") else None,
        "git": _first_line(["git", "--version"]),
        "python": sys.version.split()[0],
    }
    return env, toolchain


# ---- the C++ runner (build_native/ov_runner, packaged as a wheel by scikit-build-core) ------------------------


def build_runner(wheel_dir: Path, build_dir: Path) -> Path:
    """`pip wheel build_native/ov_runner` into `wheel_dir`; the wheel. No build isolation: it compiles against the
    openvino installed here (the runtime the binary will load) and needs no index. `build_dir` keeps CMake's tree
    between builds, so a rebuild recompiles only what changed."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    _cmake(RUNNER_CMAKE_MIN)
    if importlib.util.find_spec("scikit_build_core") is None:
        raise PipelineError("native: building ov_runner needs scikit-build-core in this environment "
                            "(a dependency of the project: pip install -e .)")
    wheel_dir, build_dir = Path(wheel_dir).resolve(), Path(build_dir).resolve()
    log = build_dir / "pip-wheel.log"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--wheel-dir", str(wheel_dir),
          "--config-settings", f"build-dir={build_dir}", str(RUNNER_SRC)], what="ov_runner wheel", log=log)
    wheels = sorted(wheel_dir.glob("aipc_ov_runner-*.whl"))
    if len(wheels) != 1:
        raise PipelineError(f"native: pip wheel left {len(wheels)} aipc_ov_runner wheels in {wheel_dir}; see {log}")
    # The binary needs exactly the openvino it was compiled against (the soname carries the patch release).
    installed = version("openvino")
    for spec in _requires(wheels[0]):
        req = Requirement(spec)
        if req.name == "openvino" and not req.specifier.contains(installed, prereleases=True):
            raise PipelineError(f"native: {RUNNER_SRC / 'pyproject.toml'} pins {req} but this environment has "
                                f"openvino {installed}; pin that release there")
    return wheels[0]


def install_runner(wheel: Path) -> Path:
    """pip install the runner's wheel into this environment; the installed binary. It must land beside openvino:
    its RPATH is $ORIGIN/../../openvino/libs."""
    from importlib.metadata import PackageNotFoundError, distribution

    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(Path(wheel).resolve())],
         what="ov_runner install")
    try:
        package = Path(distribution("aipc-ov-runner").locate_file("aipc_ov_runner"))
    except PackageNotFoundError:
        raise PipelineError(f"native: pip installed {Path(wheel).name} but aipc-ov-runner is not importable") from None
    binary = package / "bin" / ("ov_runner.exe" if IS_WINDOWS else "ov_runner")
    if not binary.is_file():
        raise PipelineError(f"native: {binary} is missing after installing {Path(wheel).name}")
    site = _package_dir("openvino").parent
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
    if IS_WINDOWS:  # no RPATH on Windows: the wheel's DLLs must be on PATH
        env["PATH"] = f"{_package_dir('openvino') / 'libs'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env)
    if proc.returncode != 0:
        message = _last_line(proc.stderr or proc.stdout).removeprefix("ov_runner: error: ")
        message = re.sub(r"Exception from \S+:\d+:\s*", "", message)  # OpenVINO's source locations, one per layer
        raise PipelineError(f"ov_runner on {ir_dir}: {message or f'exit {proc.returncode}'}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_runner(binary: Path, ir_dir: Path, ids: list[int], n: int, **options) -> list[int]:
    """Greedy-decode `n` tokens after prompt `ids` with the native runner; the generated ids."""
    return runner_json(binary, ir_dir, ids, n, **options)["tokens"]


def genai_pipeline(ir_dir: Path, properties: dict[str, str] | None = None):
    import openvino_genai

    return openvino_genai.LLMPipeline(str(ir_dir), "CPU", **(properties or {}))


def genai_greedy(pipe, ids: list[int], n: int, *, ignore_eos: bool = True) -> list[int]:
    """The same decode through openvino-genai's LLMPipeline (what the Python smoke runs), from token ids."""
    import numpy as np
    import openvino as ov
    import openvino_genai

    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample, config.ignore_eos = n, False, ignore_eos
    prompt = openvino_genai.TokenizedInputs(ov.Tensor(np.asarray([ids], dtype=np.int64)),
                                            ov.Tensor(np.ones((1, len(ids)), dtype=np.int64)))
    return [int(t) for t in pipe.generate(prompt, config).tokens[0]]


def runner_smoke(ir_dir: Path, prompts: list[str], max_new_tokens: int, wheel: Path) -> dict:
    """The native check of an OpenVINO IR (ov-fp16): install the runner's wheel, then decode each chat prompt with
    it and with openvino-genai from the same prompt ids, both in f32 and stopping at the IR's stop tokens; the tokens
    must be equal. Never raises for a mismatch: it becomes the record's reason."""
    import openvino_genai

    start = time.perf_counter()
    binary = install_runner(wheel)
    record = {"status": "passed", "reason": None, "wheel": Path(wheel).name,
              "wheel_sha256": fsutil.sha256_file(wheel), "binary": str(binary),
              "install_s": round(time.perf_counter() - start, 2), "properties": F32, "prompts": []}
    tokenizer = openvino_genai.Tokenizer(str(ir_dir))
    pipe = genai_pipeline(ir_dir, F32)
    eos = tuple(sorted(pipe.get_generation_config().stop_token_ids))
    for text in prompts:
        # GenAI renders string prompts with the IR's chat template; the runner gets exactly those ids.
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        ids = [int(i) for i in tokenizer.encode(chat, add_special_tokens=False).input_ids.data[0]]
        ours = runner_json(binary, ir_dir, ids, max_new_tokens, detokenize=True, eos=eos, properties=F32)
        theirs = genai_greedy(pipe, ids, max_new_tokens, ignore_eos=False)
        match = ours["tokens"] == theirs
        record["prompts"].append({"prompt": text, "prompt_tokens": len(ids), "runner_tokens": ours["tokens"],
                                  "genai_tokens": theirs, "match": match, "text": ours["text"],
                                  "ttft_ms": round(ours["ttft_ms"], 2), "tokens_per_s": round(ours["tokens_per_s"], 2)})
        if not match and record["reason"] is None:
            first = next((i for i, (a, b) in enumerate(zip(ours["tokens"], theirs)) if a != b),
                         min(len(ours["tokens"]), len(theirs)))
            record["status"] = "failed"
            record["reason"] = f"prompt {text!r}: runner and openvino-genai tokens differ from position {first}"
    return record


def tokenizers_extension() -> Path:
    """The openvino_tokenizers extension library (custom ops of openvino_tokenizer.xml / openvino_detokenizer.xml)."""
    import openvino_tokenizers

    return Path(openvino_tokenizers._ext_path)


# ---- helpers ---------------------------------------------------------------------------------------------------


def _cmake(minimum: tuple[int, int]) -> tuple[str, str]:
    """A cmake at least `minimum`: this venv's (PyPI `cmake`) first, then PATH's. Returns (path, version)."""
    found = []
    venv_cmake = Path(sys.executable).parent / ("cmake.exe" if IS_WINDOWS else "cmake")
    for candidate in dict.fromkeys(c for c in (str(venv_cmake) if venv_cmake.exists() else None,
                                               shutil.which("cmake")) if c):
        match = re.search(r"(\d+)\.(\d+)\.?(\d*)", _first_line([candidate, "--version"]) or "")
        if match:
            found.append(f"{match.group(0)} at {candidate}")
            if (int(match.group(1)), int(match.group(2))) >= minimum:
                return candidate, match.group(0)
    want = ".".join(map(str, minimum))
    raise PipelineError(f"native: cmake >= {want} needed (found {', '.join(found) or 'none'}); "
                        f"pip install 'cmake>={want}' into this environment")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"native: the {name} package is not installed in this environment")
    return Path(spec.submodule_search_locations[0])


def _git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PipelineError(f"native: git {args[0]} in {repo}: {_last_line(proc.stderr) or 'failed'}")
    return proc.stdout.strip()


def _step(name: str, cmd: list[str], logs: Path, **kwargs) -> dict:
    """Run one build step with its output in logs/<name>.log (and on stderr: builds take minutes to hours)."""
    log = logs / (re.sub(r"\W+", "-", name) + ".log")
    print(f"[native] {name} (log: {log})", file=sys.stderr)
    return {"name": name, "cmd": cmd, "seconds": _run(cmd, what=name, log=log, echo=True, **kwargs), "log": str(log)}


def _run(cmd: list[str], *, what: str, log: Path | None = None, echo: bool = False, cwd: Path | None = None,
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
        cause = _last_line("".join(errors[-1:]) or "".join(tail))[:300]
        raise PipelineError(f"{what} failed (exit {rc}): {cause}" + (f" (log: {log})" if log else ""))
    return round(time.perf_counter() - start, 2)


def _shown(cmd: list[str], out: Path) -> list[str]:
    """The command as recorded: the staging dir shown as <out>, the interpreter as `python`."""
    return ["python" if c == sys.executable else c.replace(str(out), "<out>") for c in cmd]


def _first_line(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines[0] if lines else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _host() -> dict:
    return {"system": platform.system(), "machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version()}
