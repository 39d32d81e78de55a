"""Each model's DVC pipeline, written from params.yaml: models/<model>/dvc.yaml, a copy of models/stages.yaml, and
models/<model>/build.yaml, the model's build list and params (params.build_yaml).

Why a dvc.yaml per model: DVC keeps one dvc.lock per dvc.yaml, parses it whole on every run and, after each stage it
runs, re-reads and rewrites it whole; and it re-reads a stage's params file for every stage whose status it checks.
With one dvc.yaml the lock and params.yaml grow with the number of models, so a run's bookkeeping grows with models x
stages run (bench/dvc_scale.py measures it). Per model, a stage's lock and params file hold only its own model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline import fsutil
from pipeline.layout import MODELS, STAGES, Layout
from pipeline.params import Params, build_yaml

FILES = ("dvc.yaml", "build.yaml")  # what sync() writes per model; dvc.lock and .gitignore beside them are DVC's


def expected(params: Params, root: Path) -> dict[Path, str]:
    """Every per-model file and the text it must have."""
    template = (Path(root) / STAGES).read_text()
    layout = Layout(Path(root))
    return {path: text for model in params.models
            for path, text in zip((layout.pipeline(model) / f for f in FILES), (template, build_yaml(params, model)))}


def sync(params: Params, root: Path) -> list[Path]:
    """Write every per-model file whose text differs, and remove the pipeline of each model no longer in params.yaml
    (its dvc.yaml, build.yaml and dvc.lock; its outputs stay, like any output of a deleted stage). Returns what
    changed: DVC had read the old files if this runs inside `dvc repro`."""
    changed = []
    for path, text in expected(params, root).items():
        if not path.is_file() or path.read_text() != text:
            fsutil.write_text(path, text)
            changed.append(path)
    for folder in sorted((Path(root) / MODELS).glob("*/")):
        if folder.name not in params.models and (folder / "dvc.yaml").is_file():
            for name in (*FILES, "dvc.lock", ".gitignore"):
                (folder / name).unlink(missing_ok=True)
            if not any(folder.iterdir()):
                shutil.rmtree(folder)
            changed.append(folder)
    return changed


def address(params: Params, name: str) -> str:
    """The `dvc repro` target of a stage name: models/<model>/dvc.yaml:<name> for a model's stage (`fetch@<model>`,
    `<backend>-export@<model>-<variant>`, ...), the name itself for the root dvc.yaml's and anything already a path."""
    if ":" in name or "@" not in name:
        return name
    suffix = name.split("@", 1)[1]
    model = suffix if suffix in params.models else next(
        (m for m, v in params.builds() if f"{m}-{v}" == suffix), None)
    return f"{MODELS}/{model}/dvc.yaml:{name}" if model else name
