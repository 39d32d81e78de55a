"""Native builds: the onnxruntime / onnxruntime-genai runtimes per execution provider and our C++ OpenVINO runner.

    params.py    the `native:` section of params.yaml (one target per entry)
    runtimes.py  stage build_native@<target>: wheel mode (wheels.py) or source mode (source.py)
    runner.py    ov_runner/ (C++) as a reproducible wheel, installed and run
    proc.py      running build tools with one-line failures
"""
