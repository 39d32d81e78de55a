"""Turn a Phi-3 checkpoint into AI-PC artifacts (OpenVINO IRs, ONNX Runtime GenAI models), reproducibly."""

__version__ = "0.1.0"
