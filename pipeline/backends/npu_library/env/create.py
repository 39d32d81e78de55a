"""Create the environment intel-npu-acceleration-library 1.4.0 runs in (default `.venv-npu/`); idempotent.

    python pipeline/backends/npu_library/env/create.py [VENV]

Standard library only: it runs before any environment exists. Why an environment of its own (DESIGN.md): the
library is sdist-only on Linux and needs openvino 2024.4, neural-compressor<=3.7, setuptools<81 and numpy<2,
none of which the pipeline's environment can hold. Its CMake rejects non-Ubuntu systems and downloads an OpenVINO
2024.4 release archive; both are skipped by a toolchain file that points FetchContent at a folder laid out like
that archive, made from the openvino wheel's own files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

LIBRARY = "intel-npu-acceleration-library==1.4.0"
REQUIREMENTS = ["torch==2.13.0", "transformers==5.5.4", "openvino==2024.4.0", "neural-compressor==3.7",
                "setuptools<81", "six", "safetensors"]
STAMP = ".aipc-npu-ready"  # holds the requirement set; a different set rebuilds


def _run(*cmd: str, **kw) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)


def _fake_release(site: Path, root: Path) -> Path:
    """A folder laid out like the OpenVINO 2024.4 release archive the library's CMake would download."""
    ov = site / "openvino"
    release = root / "openvino-release"
    lib = release / "runtime" / "lib" / "intel64"
    lib.mkdir(parents=True, exist_ok=True)
    links = {release / "runtime" / "cmake": ov / "cmake", release / "openvino": ov}
    (release / "python").mkdir(exist_ok=True)
    links[release / "python" / "openvino"] = ov
    for so in (ov / "libs").iterdir():
        links[lib / so.name] = so
    links[lib / "libopenvino.so"] = ov / "libs" / "libopenvino.so.2440"
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target)
    return release


def create(venv: Path) -> float:
    venv = Path(venv).absolute()
    want = "\n".join([LIBRARY, *REQUIREMENTS]) + "\n"
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text() == want:
        stamp.touch()  # newer than create.py, for make
        print(f"{venv}: ready ({LIBRARY})", file=sys.stderr)
        return 0.0
    start = time.perf_counter()
    _run(sys.executable, "-m", "venv", "--clear", str(venv))
    py = str(venv / "bin" / "python")
    _run(py, "-m", "pip", "install", "--quiet", *REQUIREMENTS)
    site = Path(subprocess.check_output(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    build = venv / "npu-build"
    release = _fake_release(site, build)
    toolchain = build / "toolchain.cmake"
    # OV_LIBRARY_URL set: the library's CMake skips its Ubuntu-only check and the download (a dummy URL is never
    # fetched because FetchContent finds the source dir set below).
    toolchain.write_text(
        'set(OV_LIBRARY_URL "file:///dev/null/openvino-2024.4.tgz")\n'
        f'set(FETCHCONTENT_SOURCE_DIR_OPENVINO "{release}" CACHE PATH "" FORCE)\n'
    )
    env = {**os.environ, "CMAKE_TOOLCHAIN_FILE": str(toolchain)}
    _run(py, "-m", "pip", "install", "--quiet", "--no-deps", LIBRARY, env=env)
    _run(py, "-c", "import intel_npu_acceleration_library")
    stamp.write_text(want)
    seconds = time.perf_counter() - start
    print(f"{venv}: created in {seconds:.0f} s", file=sys.stderr)
    return seconds


if __name__ == "__main__":
    create(Path(sys.argv[1] if len(sys.argv) > 1 else ".venv-npu"))
