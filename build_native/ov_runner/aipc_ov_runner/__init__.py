"""The `ov_runner` program of this wheel (build_native/ov_runner/ov_runner.cpp; usage in its header comment)."""

import os
import subprocess
import sys
from pathlib import Path


def binary() -> Path:
    return Path(__file__).parent / "bin" / ("ov_runner.exe" if os.name == "nt" else "ov_runner")


def main() -> int:
    env = None
    if os.name == "nt":  # no RPATH on Windows: the openvino wheel's DLLs must be on PATH
        import openvino

        env = dict(os.environ, PATH=f"{Path(openvino.__file__).parent / 'libs'}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.call([str(binary()), *sys.argv[1:]], env=env)
