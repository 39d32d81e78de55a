"""Where things live: artifacts/<model>/<variant>/, metrics/<model>/<variant>/ and releases/<model>/<variant>/ under
the project root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOURCE = "source"  # the fetched checkpoint
IR_FP16 = "ir-fp16"  # optimum-intel's FP16 IR, from which the OpenVINO variants are derived


@dataclass(frozen=True)
class Layout:
    root: Path

    def artifact(self, model: str, name: str) -> Path:
        return self.root / "artifacts" / model / name

    def metrics(self, model: str, name: str, kind: str) -> Path:
        return self.root / "metrics" / model / name / f"{kind}.json"

    def release(self, model: str, variant: str) -> Path:
        return self.root / "releases" / model / variant
