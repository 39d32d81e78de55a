"""Where things live: artifacts/<model>/<variant>/, metrics/<model>/<variant>/ and releases/<model>/<variant>/ under
the project root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOURCE = "source"  # the fetched checkpoint
SOURCE_JSON = "source.json"  # its provenance, inside it
IR_FP16 = "ir-fp16"  # optimum-intel's FP16 IR, from which the OpenVINO variants are derived
REFERENCE = "reference"  # the FP32 reference's results on the eval set
NATIVE = "native"  # artifacts/native/<target>: runtime builds and the C++ runner's wheel
MODELS = "models"  # models/<model>/{dvc.yaml,build.yaml,dvc.lock}: each model's DVC pipeline (pipeline/dvcfiles.py)
STAGES = "models/stages.yaml"  # the stages every model's dvc.yaml copies
FAILED = ".aipc/failed"  # the last failure of each stage command, beside metrics/ but outside DVC (see failure())
# Names a variant or model cannot take: their folders are already another stage's output.
RESERVED_VARIANTS = {SOURCE: "the fetched checkpoint", IR_FP16: "the FP16 OpenVINO IR",
                     REFERENCE: "the FP32 reference's results"}
RESERVED_MODELS = {NATIVE: "the native runtime builds"}


@dataclass(frozen=True)
class Layout:
    root: Path

    def artifact(self, model: str, name: str) -> Path:
        return self.root / "artifacts" / model / name

    def metrics(self, model: str, name: str, kind: str) -> Path:
        return self.root / "metrics" / model / name / f"{kind}.json"

    def release(self, model: str, variant: str) -> Path:
        return self.root / "releases" / model / variant

    def pipeline(self, model: str) -> Path:
        """The folder of the model's own dvc.yaml, build.yaml and dvc.lock."""
        return self.root / MODELS / model

    def failure(self, model: str, name: str, kind: str) -> Path:
        """Where a stage that failed leaves its reason: the path of its metrics(model, name, kind) under FAILED.

        Not a DVC output: DVC deletes a stage's outputs before running it and commits nothing of a failed run, and
        the reason has to outlive that for the report. It stays valid while the stage's own metrics file is absent
        or older (the next run of the stage deletes it; a restore from DVC's run cache writes a newer metrics file)."""
        return self.root / FAILED / model / name / f"{kind}.json"
