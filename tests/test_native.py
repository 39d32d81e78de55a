"""build_native: pinned wheels with a verified manifest, refusals before any work, the C++ OpenVINO runner (its wheel,
installed) against openvino-genai on a tiny FP16 IR, and (opt-in, when source checkouts are given) the real
onnxruntime-genai build."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import openvino_genai

from pipeline.record import untimed
from build_native import proc, runtimes, source
from build_native import runner as ov_runner
from build_native.params import GitSource, NativeParams
from pipeline import fsutil
from pipeline.backends.openvino.runtime import F32 as OV_F32, greedy
from pipeline.stages.runner import check_runner
from pipeline.errors import PipelineError
from tests import tiny

CPU_WHEELS = {"onnxruntime": "1.32.0", "onnxruntime_genai": "0.18.0"}
F32 = OV_F32
IDS = [int(i) for i in np.random.default_rng(0).integers(len(tiny.SPECIALS), tiny.VOCAB, 12)]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def cpu_params(**wheel) -> NativeParams:
    return NativeParams(execution_provider="cpu", wheel={**CPU_WHEELS, **wheel})


# ---- params ----------------------------------------------------------------------------------------------------


def test_params_refuse_unknown_keys_and_missing_sections():
    with pytest.raises(ValidationError, match="extra"):
        NativeParams(execution_provider="cpu", wheel=CPU_WHEELS, job=4)
    with pytest.raises(ValidationError, match="mode: source needs a `source:` section"):
        NativeParams(mode="source", execution_provider="cpu", wheel=CPU_WHEELS)
    with pytest.raises(ValidationError, match="not a 40-hex commit"):
        GitSource(commit="main", url="https://example.invalid/x.git")
    with pytest.raises(ValidationError, match="valid: onnxruntime-directml, onnxruntime-genai-directml"):
        NativeParams(execution_provider="dml", wheel={**CPU_WHEELS, "sha256": {"onnxruntime": "0" * 64}})


# ---- wheel mode ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_wheels(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("native") / "cpu"
    return out, runtimes.run(cpu_params(), out)


def test_wheel_mode_downloads_pinned_wheels_and_records_them(cpu_wheels):
    out, record = cpu_wheels
    wheels = sorted(p.name for p in out.glob("*.whl"))
    assert len(wheels) == 2 and wheels[0].startswith("onnxruntime-1.32.0-") and "genai-0.18.0" in wheels[1]
    on_disk = fsutil.hash_tree(out)
    manifest = (out / runtimes.BUILD_MANIFEST).read_text()
    # the manifest is the record less what differs from run to run and machine to machine (timings, kernel build)
    kept = json.loads(manifest)
    assert "seconds" not in manifest and "platform" not in kept["host"] and record["seconds"] > 0
    assert sys.prefix not in manifest and kept["toolchain"]["pip"].count(".") >= 1  # no venv path: same in any clone
    assert kept == {**untimed(record), "host": {k: v for k, v in record["host"].items() if k != "platform"}}
    assert record["files"] == {k: v for k, v in on_disk.items() if k != runtimes.BUILD_MANIFEST}
    assert set(record["files"]) == set(wheels)
    assert {p["version"] for p in record["packages"].values()} == {"1.32.0", "0.18.0"}
    assert record["packages"]["onnxruntime"]["sha256"] == on_disk[record["packages"]["onnxruntime"]["file"]]
    assert record["mode"] == "wheel" and record["execution_provider"] == "cpu"
    assert record["commands"][0]["cmd"][:4] == ["python", "-m", "pip", "download"]
    assert record["host"]["system"] == platform.system()


def test_wheel_mode_accepts_the_right_pin(cpu_wheels, tmp_path):
    _, record = cpu_wheels
    pins = {name: p["sha256"] for name, p in record["packages"].items()}
    again = runtimes.run(cpu_params(sha256=pins), tmp_path / "cpu")
    assert again["files"] == record["files"]  # same bytes on a second download
    assert all(p["pinned"] for p in again["packages"].values())


def test_bad_pinned_hash_fails_in_one_line_and_keeps_the_old_output(cpu_wheels, tmp_path):
    out = tmp_path / "cpu"
    shutil.copytree(cpu_wheels[0], out)
    before = fsutil.hash_tree(out)
    with pytest.raises(PipelineError) as err:
        runtimes.run(cpu_params(sha256={"onnxruntime-genai": "0" * 64}), out)
    assert "onnxruntime_genai-0.18.0" in one_line(err) and "sha256" in str(err.value)
    assert fsutil.hash_tree(out) == before  # the previous artifact is untouched...
    assert [p.name for p in tmp_path.iterdir()] == ["cpu"]  # ...and no partial dir is left beside it


def test_bad_pinned_hash_leaves_no_output(tmp_path):
    with pytest.raises(PipelineError) as err:
        runtimes.run(cpu_params(sha256={"onnxruntime": "f" * 64}), tmp_path / "cpu")
    one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_dml_wheel_pair_that_pip_cannot_install_is_refused(tmp_path):
    # onnxruntime-genai-directml 0.14.1 requires onnxruntime-directml>=1.26.0; PyPI's newest is 1.24.4.
    bad = NativeParams(execution_provider="dml", wheel={"onnxruntime": "1.24.4", "onnxruntime_genai": "0.14.1"})
    with pytest.raises(PipelineError) as err:
        runtimes.run(bad, tmp_path / "dml")
    assert "onnxruntime-directml>=1.26.0" in one_line(err)
    assert list(tmp_path.iterdir()) == []


# ---- source mode: what CI can check ----------------------------------------------------------------------------


@pytest.mark.skipif(platform.system() == "Windows", reason="DirectML source builds are allowed on Windows")
def test_dml_source_build_off_windows_fails_before_any_work(tmp_path):
    params = NativeParams(
        mode="source", execution_provider="dml", work_dir=tmp_path / "work",
        source={"onnxruntime_genai": {"commit": "a" * 40, "url": "https://example.invalid/genai.git"},
                "onnxruntime": {"commit": "b" * 40, "url": "https://example.invalid/ort.git"}},
    )
    with pytest.raises(PipelineError) as err:
        runtimes.run(params, tmp_path / "out")
    assert "DirectML" in one_line(err) and "Windows" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing cloned, nothing staged


def _git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_checkout_is_verified_against_the_pin(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "VERSION_NUMBER").write_text("1.2.3\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "VERSION_NUMBER").write_text("1.2.4\n")
    _git(repo, "commit", "-qam", "two")
    work, logs = tmp_path / "work", tmp_path / "logs"

    # A local checkout is used in place only at the pinned commit and clean.
    with pytest.raises(PipelineError) as err:
        source._checkout("x", GitSource(commit=first, path=repo), work, logs, [])
    assert first[:12] in one_line(err)
    (repo / "VERSION_NUMBER").write_text("dirty\n")
    head = _git(repo, "rev-parse", "HEAD")
    with pytest.raises(PipelineError) as err:
        source._checkout("x", GitSource(commit=head, path=repo), work, logs, [])
    assert "uncommitted" in one_line(err)
    _git(repo, "checkout", "-q", "--", ".")

    # A URL (or bare git dir) is cloned into the work dir and checked out at the pin.
    steps: list[dict] = []
    got = source._checkout("x", GitSource(commit=first, url=str(repo)), work, logs, steps)
    assert got["commit"] == first and got["version"] == "1.2.3" and not got["in_place"]
    assert [s["name"] for s in steps] == ["x clone", "x checkout"]
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(tmp_path / "bare.git")], check=True)
    got = source._checkout("y", GitSource(commit=head, path=tmp_path / "bare.git"), work, logs, [])
    assert got["commit"] == head and got["checkout"] == str(work / "src" / "y")


# ---- the C++ runner --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_ir(tiny_model, tmp_path_factory) -> Path:
    """FP16 OpenVINO IR of the tiny model, as `optimum-cli export openvino` writes it (the openvino backend's
    export_ir does the same in-process)."""
    out = tmp_path_factory.mktemp("ir") / "ov-fp16"
    cli = Path(sys.executable).parent / "optimum-cli"
    cmd = [str(cli if cli.exists() else "optimum-cli"), "export", "openvino", "--model", str(tiny_model),
           "--task", "text-generation-with-past", "--weight-format", "fp16", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def runner_wheel(tmp_path_factory) -> Path:
    """The runner's wheel, built as the pipeline builds it (pip wheel: scikit-build-core, no build isolation)."""
    tmp = tmp_path_factory.mktemp("ov_runner")
    return ov_runner.build_runner(tmp / "dist", tmp / "build")


@pytest.fixture(scope="session")
def runner(runner_wheel) -> Path:
    """Its binary, pip-installed into this environment beside openvino, as stage `runner` does."""
    return ov_runner.install_runner(runner_wheel)


def python_greedy(ir: Path, ids: list[int], n: int) -> list[int]:
    """Reference decode with the openvino Python API, step by step as the runner does it."""
    import openvino as ov

    request = ov.Core().compile_model(str(ir / "openvino_model.xml"), "CPU", F32).create_infer_request()
    request.reset_state()
    out, step, past = [], list(ids), 0
    for _ in range(n):
        logits = request.infer({
            "input_ids": np.asarray([step], dtype=np.int64),
            "attention_mask": np.ones((1, past + len(step)), dtype=np.int64),
            "position_ids": np.arange(past, past + len(step), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        })["logits"]
        past += len(step)
        out.append(int(np.argmax(logits[0, -1])))
        step = [out[-1]]
    return out


def test_runner_greedy_tokens_equal_openvino_genai(runner, tiny_ir):
    n = 24
    ours = ov_runner.run_runner(runner, tiny_ir, IDS, n, properties=F32)
    assert len(ours) == n
    assert ours == greedy(openvino_genai.LLMPipeline(str(tiny_ir), "CPU", **F32), IDS, n, ignore_eos=True)
    assert ours == python_greedy(tiny_ir, IDS, n)
    assert len(set(ours)) > 1  # not a degenerate constant output


def test_runner_reports_speed_and_stops_at_eos(runner, tiny_ir):
    record = ov_runner.runner_json(runner, tiny_ir, IDS, 8, properties=F32)
    assert record["prompt_ids"] == IDS and record["tokens_per_s"] > 0 and record["ttft_ms"] > 0
    first = record["tokens"][0]
    assert ov_runner.run_runner(runner, tiny_ir, IDS, 8, eos=(first,), properties=F32) == [first]


def test_runner_tokenizes_text_with_the_tokenizer_ir(runner, tiny_ir):
    import openvino_genai

    record = ov_runner.runner_json(runner, tiny_ir, text="The capital of France", n=4)
    expected = openvino_genai.Tokenizer(str(tiny_ir)).encode("The capital of France").input_ids.data[0]
    assert record["prompt_ids"] == [int(i) for i in expected]
    assert len(record["tokens"]) == 4 and isinstance(record["text"], str)


def test_runner_smoke_matches_genai_on_chat_prompts(runner_wheel, runner, tiny_ir):
    record = check_runner(tiny_ir, ["What is the capital of France?", "Hi"], 16, runner_wheel)
    assert record["status"] == "passed", record["reason"]
    assert record["binary"] == str(runner) and record["wheel_sha256"] == fsutil.sha256_file(runner_wheel)
    assert all(p["match"] and p["runner_tokens"] for p in record["prompts"])
    assert all(isinstance(p["text"], str) for p in record["prompts"])


def test_runner_errors_are_one_line(runner, tiny_ir):
    with pytest.raises(PipelineError) as err:
        ov_runner.run_runner(runner, tiny_ir, IDS, 2, properties={"NO_SUCH_PROPERTY": "1"})
    assert "NO_SUCH_PROPERTY" in one_line(err) and "Exception from" not in str(err.value)


def test_runner_wheel_ships_the_binary_and_pins_this_openvino(runner_wheel):
    from importlib.metadata import version

    with zipfile.ZipFile(runner_wheel) as z:
        binary = z.getinfo("aipc_ov_runner/bin/" + ("ov_runner.exe" if proc.IS_WINDOWS else "ov_runner"))
        tag = next(line for line in z.read("aipc_ov_runner-0.1.0.dist-info/WHEEL").decode().splitlines()
                   if line.startswith("Tag:"))
        scripts = z.read("aipc_ov_runner-0.1.0.dist-info/entry_points.txt").decode()
    assert proc.IS_WINDOWS or binary.external_attr >> 16 & 0o111  # executable once unpacked
    assert tag.startswith("Tag: py3-none-")  # a program: one wheel per platform, any Python
    assert "ov_runner = aipc_ov_runner:main" in scripts
    assert proc.requires(runner_wheel) == [f"openvino=={version('openvino')}"]


def test_runner_wheel_pinned_to_another_openvino_is_refused(runner_wheel, tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2099.1.0")
    with pytest.raises(PipelineError) as err:
        ov_runner.build_runner(tmp_path, runner_wheel.parent.parent / "build")  # the fixture's tree: a warm build
    assert "but this environment has openvino 2099.1.0" in one_line(err)


@pytest.mark.skipif(platform.system() != "Linux" or shutil.which("readelf") is None, reason="ELF RPATH, readelf")
def test_installed_runner_finds_openvino_through_a_relative_rpath(runner, tiny_ir):
    dynamic = subprocess.run(["readelf", "-d", str(runner)], check=True, capture_output=True, text=True).stdout
    assert "[$ORIGIN/../../openvino/libs]" in dynamic  # nothing absolute: the install works in any environment
    assert (runner.parents[2] / "openvino" / "libs").is_dir()
    # The wheel's console script, with no library path set, decodes like the build-tree binary did.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([str(Path(sys.executable).parent / "ov_runner"), str(tiny_ir), "--ids",
                           ",".join(map(str, IDS)), "--max-new-tokens", "6",
                           *[a for k, v in F32.items() for a in ("--prop", f"{k}={v}")]],
                          check=True, capture_output=True, text=True, env=env)
    assert json.loads(proc.stdout.splitlines()[-1])["tokens"] == ov_runner.run_runner(runner, tiny_ir, IDS, 6,
                                                                                   properties=F32)


def test_runner_wheel_stage_rebuilds_the_same_bytes(runner_wheel, tmp_path, monkeypatch):
    # A cold build in a fresh tree, from a copy of the sources elsewhere (another checkout): no path of either may
    # leak into the wheel. (Another environment's openvino path once did, through the linker's build ID; see
    # CMakeLists.txt. That needs a second environment to test, and was checked by hand.)
    monkeypatch.setattr(ov_runner, "RUNNER_SRC", shutil.copytree(ov_runner.RUNNER_SRC, tmp_path / "elsewhere" / "ov_runner"))
    out = tmp_path / "artifacts" / "native" / "ov_runner"
    record = ov_runner.runner_wheel(out, tmp_path / "build")
    assert record["wheel"] == runner_wheel.name and record["sha256"] == fsutil.sha256_file(runner_wheel)
    assert ov_runner.runner_wheel_file(out) == out / runner_wheel.name
    assert sorted(p.name for p in out.iterdir()) == sorted([runner_wheel.name, fsutil.MANIFEST])


@pytest.mark.skipif(platform.system() != "Linux" or shutil.which("readelf") is None, reason="ELF RPATH, readelf")
def test_plain_cmake_build_still_works(runner, tiny_ir, tmp_path):
    cmake, _ = proc.cmake(ov_runner.RUNNER_CMAKE_MIN)
    ov_cmake = proc.package_dir("openvino") / "cmake"
    subprocess.run([cmake, "-S", str(ov_runner.RUNNER_SRC), "-B", str(tmp_path), f"-DOpenVINO_DIR={ov_cmake}"],
                   check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(tmp_path)], check=True, capture_output=True)
    dynamic = subprocess.run(["readelf", "-d", str(tmp_path / "ov_runner")], capture_output=True, text=True).stdout
    assert str(proc.package_dir("openvino") / "libs") in dynamic  # the build tree's binary: absolute RPATH
    assert (ov_runner.run_runner(tmp_path / "ov_runner", tiny_ir, IDS, 6, properties=F32)
            == ov_runner.run_runner(runner, tiny_ir, IDS, 6, properties=F32))


# ---- source mode for real: opt-in ------------------------------------------------------------------------------
# AIPC_NATIVE_GENAI_SRC: an onnxruntime-genai checkout; AIPC_NATIVE_ORT_SRC: an onnxruntime checkout (headers) at
# the release of the onnxruntime wheel this interpreter imports (another release: `pip install --target DIR` it and
# put DIR first on PYTHONPATH); AIPC_NATIVE_DEPS (optional): a dir whose subdirs are FetchContent sources named as
# genai's cmake/deps.txt and onnxruntime-extensions name them (offline build); AIPC_NATIVE_WORK, AIPC_NATIVE_OUT,
# AIPC_NATIVE_CCACHE_DIR (optional): work dir, artifact dir, compiler cache; AIPC_NATIVE_MODEL (optional): an ORT
# GenAI model dir to generate with the built wheel. Never set in CI: no sources reach it.


@pytest.mark.skipif(not (os.environ.get("AIPC_NATIVE_GENAI_SRC") and os.environ.get("AIPC_NATIVE_ORT_SRC")),
                    reason="set AIPC_NATIVE_GENAI_SRC and AIPC_NATIVE_ORT_SRC to source checkouts")
def test_source_build_of_genai_against_the_onnxruntime_wheel(tmp_path):
    genai, ort = Path(os.environ["AIPC_NATIVE_GENAI_SRC"]), Path(os.environ["AIPC_NATIVE_ORT_SRC"])
    deps_dir = os.environ.get("AIPC_NATIVE_DEPS")
    deps = {d.name: d for d in sorted(Path(deps_dir).iterdir()) if d.is_dir()} if deps_dir else {}
    params = NativeParams(
        mode="source", execution_provider="cpu", jobs=os.cpu_count() or 2,
        work_dir=Path(os.environ.get("AIPC_NATIVE_WORK", "build_native/out")),
        ccache_dir=os.environ.get("AIPC_NATIVE_CCACHE_DIR") or None,
        source={"onnxruntime_from": "headers",
                "onnxruntime_genai": {"commit": _git(genai, "rev-parse", "HEAD"), "path": genai, "deps": deps},
                "onnxruntime": {"commit": _git(ort, "rev-parse", "HEAD"), "path": ort}},
    )
    out = Path(os.environ.get("AIPC_NATIVE_OUT") or tmp_path / "cpu-source")
    record = runtimes.run(params, out)
    (wheel,) = record["wheels"]
    assert (out / "ort" / "include" / "onnxruntime_c_api.h").is_file()
    assert record["files"][f"wheels/{wheel}"] == fsutil.sha256_file(out / "wheels" / wheel)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site),
                    str(out / "wheels" / wheel)], check=True, capture_output=True)
    # The built wheel first, then whatever PYTHONPATH already held (e.g. the onnxruntime wheel matching the headers).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    where = subprocess.run([sys.executable, "-c", "import onnxruntime_genai as og; print(og.__file__)"],
                           env=env, check=True, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site))
    model = os.environ.get("AIPC_NATIVE_MODEL")
    if model:
        from pipeline.backends.common import chat_text

        prompt = chat_text(Path(model), "What is the capital of France?")  # as every smoke run renders it
        gen = subprocess.run([sys.executable, "-c", GENERATE, model, prompt, "32"],
                             env=env, capture_output=True, text=True)
        assert gen.returncode == 0, gen.stderr[-2000:]
        answer = json.loads(gen.stdout.strip().splitlines()[-1])
        print(f"\n[native] built wheel {wheel} answers: {answer}")
        assert answer["onnxruntime_genai"].startswith(str(site)) and answer["new_tokens"] > 0
        assert "Paris" in answer["text"], answer


# Greedy generation from a templated prompt with whatever onnxruntime_genai the PYTHONPATH gives; one JSON line.
GENERATE = """
import json, sys, time
import onnxruntime as ort, onnxruntime_genai as og
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = og.Model(path)
tokenizer = og.Tokenizer(model)
ids = tokenizer.encode(prompt)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=len(ids) + n)
generator = og.Generator(model, params)
start = time.perf_counter()
generator.append_tokens(ids)
out = []
while not generator.is_done() and len(out) < n:
    generator.generate_next_token()
    out.append(int(generator.get_next_tokens()[0]))
seconds = time.perf_counter() - start
print(json.dumps({"onnxruntime_genai": og.__file__, "onnxruntime": ort.__version__, "prompt_tokens": len(ids),
                  "new_tokens": len(out), "tokens_per_s": round(len(out) / seconds, 2), "text": tokenizer.decode(out)}))
"""


# ---- source mode: the pieces that need no sources --------------------------------------------------------------


def source_params(tmp_path: Path, ep: str = "cpu") -> NativeParams:
    deps = tmp_path / "deps" / "pybind11"
    deps.mkdir(parents=True, exist_ok=True)
    return NativeParams(
        mode="source", execution_provider=ep, jobs=3,
        source={"onnxruntime_genai": {"commit": "a" * 40, "url": "u", "deps": {"pybind11": deps}},
                "onnxruntime": {"commit": "b" * 40, "url": "v"}},
    )


@pytest.mark.parametrize("windows", [False, True])
def test_build_commands(tmp_path, monkeypatch, windows):
    monkeypatch.setattr(proc, "IS_WINDOWS", windows)
    ep = "dml" if windows else "cpu"
    params = source_params(tmp_path, ep)
    (tmp_path / "build.py").write_text("parser.add_argument('--skip_examples')")
    ort = source._ort_build_cmd(params, tmp_path, tmp_path / "b", "cmake")
    assert Path(ort[0]).name == ("build.bat" if windows else "build.sh")
    for flag in ("--build_shared_lib", "--skip_tests", "--parallel", "--config"):
        assert flag in ort
    assert ort[ort.index("--parallel") + 1] == "3" and ort[ort.index("--config") + 1] == "Release"
    assert ("--use_dml" in ort) == windows
    assert "onnxruntime_USE_TELEMETRY=OFF" in ort[ort.index("--cmake_extra_defines"):]
    assert "FETCHCONTENT_FULLY_DISCONNECTED=ON" not in ort  # no deps given for onnxruntime: it may download

    genai = source._genai_build_cmd(params, tmp_path, tmp_path / "g", tmp_path / "ort", "cmake")
    assert genai[1].endswith("build.py") and genai[genai.index("--ort_home") + 1] == str(tmp_path / "ort")
    assert ("--use_dml" in genai) == windows and "--skip_examples" in genai
    assert "--parallel" not in genai  # bounded by CMAKE_BUILD_PARALLEL_LEVEL instead
    defines = genai[genai.index("--cmake_extra_defines") + 1:]
    assert "ENABLE_TELEMETRY=OFF" in defines and "FETCHCONTENT_FULLY_DISCONNECTED=ON" in defines
    assert f"PYTHON_EXECUTABLE={sys.executable}" in defines  # pybind11 and the wheel target: this interpreter
    assert f"FETCHCONTENT_SOURCE_DIR_PYBIND11={(tmp_path / 'deps' / 'pybind11').resolve()}" in defines


@pytest.mark.parametrize("ep", ["cpu", "dml"])
def test_ort_home_is_staged_like_the_seed(tmp_path, ep):
    src = tmp_path / "onnxruntime"
    session = src / "include" / "onnxruntime" / "core" / "session"
    session.mkdir(parents=True)
    for h in ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_cxx_inline.h", "onnxruntime_float16.h"):
        (session / h).write_text(f"// {h}\n")
    dml = src / "include" / "onnxruntime" / "core" / "providers" / "dml"
    dml.mkdir(parents=True)
    (dml / "dml_provider_factory.h").write_text("// dml\n")
    lib = tmp_path / "libonnxruntime.so.1.32.0"
    lib.write_bytes(b"\x7fELF")
    home = tmp_path / "ort"
    source._stage_ort_home(src, [lib], home, ep)
    headers = sorted(p.name for p in (home / "include").iterdir())
    assert "onnxruntime_c_api.h" in headers and ("dml_provider_factory.h" in headers) == (ep == "dml")
    libdir = home / "lib"
    assert (libdir / "libonnxruntime.so").resolve() == (libdir / "libonnxruntime.so.1.32.0").resolve()
    assert (libdir / "libonnxruntime.so.1").read_bytes() == b"\x7fELF"
