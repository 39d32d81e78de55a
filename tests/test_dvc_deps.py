"""dvc.yaml's and models/stages.yaml's deps against the code each stage really runs, and the layers of the code itself.

A stage's code is the import closure of its entry function's module (pipeline/cli.py's table) plus, for the
`<backend>-<stage>` matrices, that backend's package; imports are read from the source (every `import` statement,
function-level ones included, but not those under `if TYPE_CHECKING:`). Both directions are checked: a module the stage
runs but does not declare is a stage that will not rerun when it should (the bug class this catches: a stage
listing pipeline/backends/ but not the shared module it imports, or package not listing the gate it applies); a
declared code dep that the stage never imports reruns it for nothing (every export depending on every backend).

PLUMBING modules route and record; they are imported by every stage and do not decide any output's bytes, so no
stage declares them (params.py's values are tracked by each stage's `params:` and by the `check` stage).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.backends import BACKENDS
from pipeline.layout import STAGES
from tests.conftest import ROOT

PLUMBING = {"pipeline", "pipeline.cli", "pipeline.errors", "pipeline.layout", "pipeline.schema", "pipeline.record",
            "pipeline.params", "pipeline.fsutil", "pipeline.backends", "pipeline.stages", "build_native"}
OURS = ("pipeline", "build_native")


def _file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _under_type_checking(tree: ast.Module) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return skip


@cache
def imports(module: str) -> frozenset[str]:
    """The project modules `module` imports (and each one's parent packages, which Python runs first)."""
    path = _file(module)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text())
    skip = _under_type_checking(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import name` imports the submodule package.name where there is one
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            if name.split(".")[0] in OURS and _file(name):
                parts = name.split(".")
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return frozenset(found - {module})


def closure(roots: list[str], plumbing: set[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module not in plumbing:
            todo.extend(imports(module))
    return {m for m in seen if m not in plumbing}


def _stages() -> dict[str, dict]:
    """The stages of dvc.yaml and models/stages.yaml (every model's dvc.yaml), each `foreach` group as its `do:`."""
    return {name: stage.get("do", stage) for path in ("dvc.yaml", STAGES)
            for name, stage in yaml.safe_load((ROOT / path).read_text())["stages"].items()}


def _roots(name: str, stage: dict) -> list[str]:
    command = stage["cmd"].split()[1]
    roots = [cli.COMMANDS[command].function.split(":")[0]]
    backend = "openvino" if name == "ir" else name.split("-")[0]  # ir: openvino's export_ir
    if backend in BACKENDS:
        roots.append(f"pipeline.backends.{backend}")
        # the package's interface functions, loaded on first use (backends/common.provided), and the scripts it runs
        # in an environment of its own (npu_library/env/worker.py)
        roots += [".".join(p.relative_to(ROOT).with_suffix("").parts)
                  for p in (ROOT / "pipeline/backends" / backend).rglob("*.py") if p.stem != "__init__"]
    if name == "fetch":  # pipeline/sources/__init__.py picks the module of the model's `source:` at run time
        roots += [f"pipeline.sources.{p.stem}" for p in (ROOT / "pipeline/sources").glob("*.py")]
    if name == "check":  # params.py itself, and each backend's Variant that it validates with
        roots += ["pipeline.params", "pipeline.integrity", *(f"pipeline.backends.{b}.params" for b in BACKENDS),
                  *(f"pipeline.backends.{b}" for b in BACKENDS), "pipeline.backends"]
    return roots


def _code_deps(stage: dict) -> list[str]:
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return [d for d in deps if d.startswith(("pipeline/", "build_native/")) and not d.startswith(
        ("pipeline/evalset", "pipeline/calibration", "build_native/ov_runner"))]  # data and C++ sources, not imported


def _rel(module: str) -> str:
    return _file(module).relative_to(ROOT).as_posix()


@pytest.mark.parametrize("name", sorted(_stages()))
def test_a_stage_declares_exactly_the_code_it_runs(name):
    stage = _stages()[name]
    plumbing = PLUMBING - ({"pipeline.params", "pipeline.backends", "pipeline.layout", "pipeline.schema"}
                           if name == "check" else set())
    ran = closure(_roots(name, stage), plumbing)
    declared = _code_deps(stage)
    covered = lambda rel, dep: rel == dep or rel.startswith(dep.rstrip("/") + "/")  # noqa: E731
    undeclared = sorted(_rel(m) for m in ran if not any(covered(_rel(m), d) for d in declared))
    assert not undeclared, f"{name} runs {undeclared} but does not list them in its deps"
    unused = [d for d in declared if not any(covered(_rel(m), d) for m in ran)]
    assert not unused, f"{name} lists {unused} but never imports them"


def test_every_stage_waits_for_the_params_check():
    stages = _stages()
    out = next(iter(stages["check"]["outs"][0]))
    assert [n for n, s in stages.items() if n != "check" and out not in s.get("deps", [])] == []


def _all_modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for top in OURS for p in (ROOT / top).rglob("*.py") if "env" not in p.relative_to(ROOT).parts)


def test_layers_never_import_upward():
    """params/layout/errors at the bottom; sources and backends above; stages above those; the CLI on top."""
    for module in _all_modules():
        found = imports(module)
        if module.startswith(("pipeline.backends", "pipeline.sources")):
            bad = {m for m in found if m.startswith(("pipeline.stages", "build_native", "pipeline.cli"))
                   and m != "build_native"}
            assert not bad, f"{module} imports {sorted(bad)}"
        if module in ("pipeline.params", "pipeline.schema", "pipeline.layout", "pipeline.errors", "pipeline.fsutil"):
            bad = {m for m in found if m.startswith(("pipeline.stages", "pipeline.cli", "pipeline.sources"))}
            assert not bad, f"{module} imports {sorted(bad)}"
        for other in BACKENDS:  # a backend never reaches into another
            if module.split(".")[:3] == ["pipeline", "backends", other]:  # not openvino_ep for openvino
                bad = {m for m in found if m.startswith("pipeline.backends.") and m.split(".")[2] not in (other, "common")}
                assert not bad, f"{module} imports {sorted(bad)}"


def test_no_import_cycles():
    graph = {m: imports(m) for m in _all_modules()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph.get(m, ()):
            if n in path[:-1] or state.get(n) == 1:
                if not (n in m.split(".") or m.startswith(n + ".")):  # a package and its own submodules
                    raise AssertionError(f"import cycle: {' -> '.join([*path, n])}")
                continue
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
