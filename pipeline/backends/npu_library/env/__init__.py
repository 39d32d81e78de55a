"""The isolated environment of intel-npu-acceleration-library (create.py makes it; worker.py runs inside it)."""
