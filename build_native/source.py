"""`mode: source`: checks out each pinned commit (verified), builds onnxruntime (build.sh/.bat --build_shared_lib),
stages its headers and libraries into an ORT_HOME (ort/include, ort/lib) as the seed's copy commands did, builds
onnxruntime-genai against it (build.py --ort_home) and collects the wheel. `onnxruntime_from` also allows a
genai-only build against a prebuilt onnxruntime or the installed onnxruntime wheel's library, since onnxruntime alone
takes hours. DirectML builds are Windows-only (onnxruntime cmake/external/dml.cmake, genai cmake/check_dml.cmake)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from pathlib import Path

from build_native import proc
from build_native.params import GitSource, NativeParams
from pipeline.errors import PipelineError

GENAI_CMAKE_MIN = (3, 28)  # measured (DESIGN.md)


def build(native: NativeParams, out: Path, target: str) -> dict:
    src, ep = native.source, native.execution_provider
    work = native.work_dir.resolve()
    build = work / "build" / target
    logs = build / "logs"
    cmake, cmake_version = proc.cmake(GENAI_CMAKE_MIN)
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
            commands.append(proc.step("onnxruntime build", cmd, logs, cwd=ort_src, env=env))
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
    commands.append(proc.step("onnxruntime-genai build", cmd, logs, cwd=genai_src, env=env))
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
        "host": proc.host(),
        "toolchain": toolchain,
        "work_dir": str(work),
    }


def preflight(native: NativeParams) -> None:
    """Every refusal of a source build, before anything is cloned or built."""
    ep = native.execution_provider
    if ep == "dml" and not proc.IS_WINDOWS:
        raise PipelineError(
            f"native: DirectML builds need Windows (onnxruntime cmake/external/dml.cmake and onnxruntime-genai "
            f"cmake/check_dml.cmake refuse other systems), this is {platform.system()}; use mode: wheel here"
        )
    if ep == "cuda" and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        raise PipelineError("native: execution_provider cuda builds need CUDA_HOME pointing at a CUDA toolkit")
    src = native.source
    if shutil.which("git") is None:
        raise PipelineError("native: source mode needs git on PATH")
    proc.cmake(GENAI_CMAKE_MIN)
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
        if proc.IS_WINDOWS:
            raise PipelineError("native: onnxruntime_from: headers needs onnxruntime.lib on Windows, which the "
                                "onnxruntime wheel does not ship; use build or prebuilt")
        _wheel_ort_libs()


def _checkout(name: str, repo: GitSource, work: Path, logs: Path, commands: list[dict]) -> dict:
    """The pinned commit's work tree, verified: HEAD == commit, nothing uncommitted."""
    local = repo.path is not None and proc.git(repo.path, "rev-parse", "--is-bare-repository") == "false"
    if local:
        tree = repo.path.resolve()
    else:
        tree = work / "src" / name
        origin = repo.url or str(repo.path.resolve())
        if not (tree / ".git").exists():
            commands.append(proc.step(f"{name} clone", ["git", "clone", "--no-checkout", origin, str(tree)], logs))
        if proc.git(tree, "cat-file", "-t", repo.commit, check=False) != "commit":
            commands.append(proc.step(f"{name} fetch", ["git", "-C", str(tree), "fetch", origin, repo.commit], logs))
        cmd = ["git", "-C", str(tree), "-c", "advice.detachedHead=false", "checkout", "--force", "--detach",
               repo.commit]
        commands.append(proc.step(f"{name} checkout", cmd, logs))
        if (tree / ".gitmodules").exists():
            cmd = ["git", "-C", str(tree), "submodule", "update", "--init", "--recursive"]
            commands.append(proc.step(f"{name} submodules", cmd, logs))
    head = proc.git(tree, "rev-parse", "HEAD")
    if head != repo.commit:
        raise PipelineError(f"native: {name} at {tree} is {head[:12]}, params pin {repo.commit[:12]}; "
                            "check out the pinned commit or change the pin")
    dirty = proc.git(tree, "status", "--porcelain", "--untracked-files=no")
    if dirty:
        raise PipelineError(f"native: {name} at {tree} has uncommitted changes ({dirty.splitlines()[0].strip()}); "
                            "a pinned build needs a clean checkout")
    version = next((f.read_text().strip() for f in (tree / "VERSION_NUMBER", tree / "VERSION_INFO") if f.is_file()),
                   None)
    return {"commit": head, "origin": repo.url or str(repo.path), "checkout": str(tree), "in_place": local,
            "version": version, "deps": {k: str(v) for k, v in repo.deps.items()}}


def _cmake_defines(native: NativeParams, repo: GitSource, telemetry_option: str) -> list[str]:
    defines = [f"{telemetry_option}=OFF"]
    if shutil.which("ccache") and not proc.IS_WINDOWS:  # the launcher variables are ignored by Visual Studio generators
        defines += ["CMAKE_C_COMPILER_LAUNCHER=ccache", "CMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    if repo.deps:
        defines.append("FETCHCONTENT_FULLY_DISCONNECTED=ON")
        defines += [f"FETCHCONTENT_SOURCE_DIR_{name.upper()}={Path(path).resolve()}"
                    for name, path in repo.deps.items()]
    return defines


def _generator() -> list[str]:
    # Ninja where it exists (fast no-op rebuilds, plays well with ccache); build.py's default (VS) on Windows.
    return ["--cmake_generator", "Ninja"] if shutil.which("ninja") and not proc.IS_WINDOWS else []


def _ort_build_cmd(native: NativeParams, ort_src: Path, build_dir: Path, cmake: str) -> list[str]:
    script = ort_src / ("build.bat" if proc.IS_WINDOWS else "build.sh")
    cmd = [str(script), "--config", "Release", "--build_shared_lib", "--parallel", str(native.jobs), "--skip_tests",
           "--build_dir", str(build_dir), "--cmake_path", cmake, "--skip_submodule_sync",
           "--compile_no_warning_as_error", *_generator()]
    if native.execution_provider == "dml":
        cmd.append("--use_dml")
    if native.execution_provider == "cuda":
        cmd += ["--use_cuda", "--cuda_home", os.environ.get("CUDA_HOME") or os.environ["CUDA_PATH"]]
    if not proc.IS_WINDOWS and os.geteuid() == 0:
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
    patterns = (["onnxruntime*.dll", "onnxruntime*.lib", "DirectML.dll"] if proc.IS_WINDOWS
                else ["libonnxruntime*.so*", "libonnxruntime*.dylib"])
    where = release / "Release" if proc.IS_WINDOWS else release
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
    ccache = shutil.which("ccache") if not proc.IS_WINDOWS else None
    if ccache and native.ccache_dir:
        env["CCACHE_DIR"] = str(native.ccache_dir.resolve())
    cxx = os.environ.get("CXX") or ("cl" if proc.IS_WINDOWS else "c++")
    toolchain = {
        "cmake": {"path": cmake, "version": cmake_version},
        "compiler": proc.first_line([cxx] if proc.IS_WINDOWS else [cxx, "--version"]),
        "ccache": {"version": proc.first_line([ccache, "--version"]), "dir": env.get("CCACHE_DIR")} if ccache else None,
        "ninja": proc.first_line(["ninja", "--version"]) if shutil.which("ninja") else None,
        "git": proc.first_line(["git", "--version"]),
        "python": sys.version.split()[0],
    }
    return env, toolchain
