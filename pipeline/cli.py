"""`aipc`: one subcommand per DVC stage (dvc.yaml calls these and nothing else), plus check, toolchain, publish.

COMMANDS is the whole CLI: subcommand -> the stage function it calls, with that function's arguments. Every
function is called as fn(params, layout, **arguments), after params.yaml is validated; stage modules are imported
only when their command runs (`aipc --help` imports none of them).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import PipelineError
from pipeline.layout import IR_FP16, REFERENCE, SOURCE

MODEL = (("model",), {})
VARIANT = (("variant_name",), {"metavar": "variant"})
TARGET = (("target",), {})


class Command(NamedTuple):
    function: str  # "module:function"
    help: str
    arguments: tuple = ()
    # (name, kind) of the metrics/<model>/<name>/<kind>.json a stage writes (VARIANT_NAME: its variant): where a
    # failure leaves its reason for the report (Layout.failure)
    metrics: tuple[str, str] | None = None


VARIANT_NAME = "<variant>"


COMMANDS = {
    "check": Command("pipeline.cli:check", "validate params.yaml, verify every output against its manifest and sweep "
                     "interrupted runs' debris; stage `check`, which every stage depends on, runs it first on every "
                     "dvc repro", ((("--out",), {"type": Path}),)),
    "repro": Command("pipeline.cli:repro", "write each model's models/<model>/{dvc.yaml,build.yaml} from params.yaml, "
                     "then `dvc repro --keep-going`: a failure stops only what depends on it; if any stage failed, "
                     "the report anyway (every model x variant: built, failed and why, or not configured) and exit 1",
                     ((("targets",), {"nargs": "*", "help": "dvc repro targets, stage names as `dvc status` prints "
                                      "them (default: the whole pipeline)"}),)),
    "repair": Command("pipeline.cli:repair", "delete every output file changed in place, its DVC cache object and "
                      "every link to it, then `dvc repro` rebuilds them"),
    "fetch": Command("pipeline.stages.fetch:stage", "materialise a model's checkpoint into artifacts/<model>/source",
                     (MODEL,), (SOURCE, "fetch")),
    "ir": Command("pipeline.stages.ir:stage", "export a model's FP16 OpenVINO IR (the base of the OpenVINO variants)",
                  (MODEL,), (IR_FP16, "export")),
    "export": Command("pipeline.stages.export:stage", "build one variant into artifacts/<model>/<variant>",
                      (MODEL, VARIANT), (VARIANT_NAME, "export")),
    "smoke": Command("pipeline.stages.smoke:stage", "run one artifact with its runtime; "
                     "metrics/<model>/<variant>/smoke.json", (MODEL, VARIANT), (VARIANT_NAME, "smoke")),
    "reference": Command("pipeline.stages.reference:stage", "FP32 torch results for the eval set into "
                         "artifacts/<model>/reference", (MODEL,), (REFERENCE, "reference")),
    "quality": Command("pipeline.stages.quality:stage", "score one artifact against the FP32 reference; "
                       "metrics/<model>/<variant>/quality.json", (MODEL, VARIANT), (VARIANT_NAME, "quality")),
    "report": Command("pipeline.stages.report:stage", "every artifact's quality in one table; fails on a threshold "
                      "miss unless quality.enforce is false"),
    "package": Command("pipeline.stages.package:stage", "release dir (artifact, model card, manifest, provenance) in "
                       "releases/<model>/<variant>", (MODEL, VARIANT)),
    "native": Command("pipeline.stages.native:build", "runtime wheels or a source build of one target into "
                      "artifacts/native/<target>", (TARGET,)),
    "runner-wheel": Command("pipeline.stages.runner_wheel:stage", "our C++ OpenVINO runner as a wheel "
                            "(scikit-build-core) into artifacts/native/ov_runner"),
    "runner": Command("pipeline.stages.runner:stage", "our C++ OpenVINO runner vs openvino-genai on <model>'s FP16 "
                      "IR", (MODEL,), (IR_FP16, "runner")),
    "toolchain": Command("pipeline.stages.toolchain:stage", "print, --write or --check the exporter version locks "
                         "in toolchain/", (
                             (("--write",), {"action": "store_true", "help": "record the installed versions "
                                             "(exports they affect rerun)"}),
                             (("--check",), {"action": "store_true", "help": "fail naming a package whose "
                                             "installed version drifted"}))),
    "pareto": Command("pipeline.stages.pareto:stage", "the INT4 recipes of every DVC experiment per route: the "
                      "Pareto front of KL against bytes and the pick under a size budget; not a DVC stage", (
                          (("--budget-x",), {"type": float, "default": 1.05, "help": "budget as a multiple of the "
                                             "route's seed recipe's bytes (default 1.05)"}),
                          (("--budget-mb",), {"type": float, "help": "budget in MB (10^6 bytes), every route"}),
                          (("--commits",), {"type": int, "default": 10, "help": "experiments made from the last N "
                                            "commits (default 10)"}),
                          (("--rev",), {"help": "count the commits from this revision (default HEAD)"}))),
    "publish": Command("pipeline.stages.publish:stage", "release dirs to a hub (one commit + a version tag per "
                       "variant) and/or DVC outs to a DVC remote; not a DVC stage", (
                           MODEL,
                           (("variants",), {"nargs": "*", "help": "default: every variant in params.yaml"}),
                           (("--repo-prefix",), {"help": "ORG/NAME: each variant goes to ORG/NAME-<variant>"}),
                           (("--version",), {"help": "tag, vMAJOR.MINOR.PATCH"}),
                           (("--endpoint",), {"help": "hub URL (default: HF_ENDPOINT or huggingface.co)"}),
                           (("--dry-run",), {"action": "store_true", "help": "print the plan; write nothing"}),
                           (("--dvc-remote",), {"metavar": "NAME", "help": "also `dvc push -r NAME`"}))),
    "verify": Command("pipeline.stages.verify:stage", "rebuild a release from what its provenance names and compare "
                      "it file by file (identical, or within the bound it states); not a DVC stage",
                      ((("release",), {"help": "a release directory, or ORG/NAME[@REVISION] on the hub"}),)),
    "matrix": Command("pipeline.stages.matrix:stage", "the CI job matrix (JSON for GitHub Actions' fromJSON): "
                      "which dvc repro targets each job owns, on which runner; not a DVC stage", (
                          (("--scale",), {"type": int, "dest": "scale_models", "metavar": "N",
                                          "help": "summary for N synthetic models x params.yaml's variants"}),
                          (("--like",), {"default": "phi-3-mini-4k-instruct",
                                         "help": "the published config the --scale models copy"}),
                          (("--runner",), {"action": "append", "metavar": "NAME=RAM_GB,DISK_GB",
                                           "help": "a runner jobs may use (ubuntu-latest=16,14 and windows-latest=16,14 "
                                                   "always); one with 'windows' in its name takes Windows jobs"}),
                          (("--github-output",), {"type": Path, "metavar": "FILE",
                                                  "help": "also append key=json lines (GITHUB_OUTPUT)"}))),
    "push": Command("pipeline.stages.matrix:push", "dvc push --run-cache, with the metrics files the run-cache "
                    "entries name (a CI job's last step)", (
                        (("-r", "--remote"), {}),
                        (("targets",), {"nargs": "*", "help": "dvc.yaml stages (default: all)"}))),
}
GLOBAL = ("params", "root", "debug", "command")


def check(params, layout, out: Path | None = None) -> None:
    """`aipc check [--out FILE]`: params.yaml is valid (load() raised otherwise), no output was changed in place,
    and interrupted runs left nothing behind. The stage writes FILE, whose bytes never change, so running it on every
    `dvc repro` reruns nothing downstream."""
    from pipeline import dvcfiles, fsutil, integrity

    changed = dvcfiles.sync(params, layout.root)
    if changed:
        raise PipelineError(f"{changed[0].relative_to(layout.root)} was out of date with params.yaml or "
                            f"{dvcfiles.STAGES} ({len(changed)} file(s): a model, a variant or a value added, changed "
                            "or removed): rewritten; run `dvc repro` again, which reads them before this check runs "
                            "(`aipc repro` writes them first)")
    for path in integrity.sweep(layout.root):
        print(f"removed {path.relative_to(layout.root)} (left by an interrupted run)", file=sys.stderr)
    integrity.verify(layout.root)
    print(f"params.yaml: ok ({len(params.models)} model(s), {len(params.variants)} variant(s)); outputs match "
          "their manifests")
    if out is not None:
        fsutil.write_json(out, {"params": "valid"})


def repro(params, layout, targets: list[str]) -> None:
    """`aipc repro [targets]`: what `make repro` runs. DVC runs the stages; --keep-going makes a failing stage skip
    only its dependents. `report` depends on every model's metrics, so DVC skips it after any failure: it then runs
    here, outside DVC, to give every configured model x variant its status (a failure with its reason from
    Layout.failure) before this exits 1."""
    import subprocess

    from pipeline import dvcfiles

    dvcfiles.sync(params, layout.root)
    # no targets: every dvc.yaml's stages (the root file's alone would leave the packages out)
    targets = [dvcfiles.address(params, t) for t in targets] or ["--all-pipelines"]
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--keep-going", *targets], cwd=layout.root)
    if done.returncode == 0:
        return
    from pipeline.stages import report

    print("\naipc repro: `dvc repro` failed; the report of every model x variant:", file=sys.stderr)
    try:
        report.stage(params, layout)
    except PipelineError as e:
        raise PipelineError(f"dvc repro failed (exit {done.returncode}); {e}") from None
    raise PipelineError(f"dvc repro failed (exit {done.returncode}): the stages it names above")


def repair(params, layout) -> None:
    """`aipc repair`: see integrity.repair; then `dvc repro` rebuilds what was deleted."""
    import subprocess

    from pipeline import integrity

    removed = integrity.repair(layout.root)
    for path in removed:
        print(f"deleted {path.relative_to(layout.root)}", file=sys.stderr)
    if not removed:
        print("no output was changed in place: nothing to repair")
        return
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=layout.root)
    if done.returncode:
        raise PipelineError(f"dvc repro after the repair failed (exit {done.returncode}); see its output above")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aipc", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--root", type=Path, default=Path("."), help="project root holding artifacts/ and metrics/")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        s = sub.add_parser(name, help=command.help)
        for flags, options in command.arguments:
            s.add_argument(*flags, **options)
    return p


def _run(args: argparse.Namespace) -> None:
    from pipeline import params as params_mod
    from pipeline.layout import Layout

    params = params_mod.load(args.params)
    arguments = {k: v for k, v in vars(args).items() if k not in GLOBAL}
    params_mod.require(params, arguments.get("model"),
                       [arguments["variant_name"]] if "variant_name" in arguments else arguments.get("variants", ()))
    command, layout = COMMANDS[args.command], Layout(args.root)
    module, function = command.function.split(":")
    failure = None
    if command.metrics:  # this run's outcome replaces the last one's (a run killed outright leaves no reason)
        name, kind = command.metrics
        failure = layout.failure(arguments["model"], arguments["variant_name"] if name == VARIANT_NAME else name, kind)
        failure.unlink(missing_ok=True)
    try:
        getattr(importlib.import_module(module), function)(params, layout, **arguments)
    except Exception as e:
        if failure is not None:  # the report's "failed: <reason>" for a stage DVC commits nothing of
            from pipeline import fsutil

            reason = one_line(e, f"aipc {args.command}") or " ".join(f"{type(e).__name__}: {e}".split())[:500]
            fsutil.write_json(failure, {"command": " ".join(["aipc", args.command, *map(str, arguments.values())]),
                                        "error": reason})
        raise


def one_line(e: BaseException, command: str) -> str | None:
    """What a user can act on, in one line, for a failure they can cause; None for a bug (the traceback is shown)."""
    if isinstance(e, PipelineError):
        return str(e)
    cause = " ".join(str(e).split())
    if isinstance(e, OSError) and e.errno is not None:
        where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p)
        kind = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system"}.get(e.errno)
        return f"{command}: {kind or e.strerror}{f': {where}' if where else ''}"
    module = type(e).__module__.split(".")[0]
    name = type(e).__name__
    if module == "huggingface_hub":
        if name == "OfflineModeIsEnabled":
            return f"{command}: needs the Hugging Face hub but HF_HUB_OFFLINE is set ({cause})"
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if status in (401, 403):
            return f"{command}: the hub refused the token (HTTP {status}): check HF_TOKEN or `hf auth login`"
        return f"{command}: hub error{f' (HTTP {status})' if status else ''}: {cause[:300]}"
    if module in ("httpx", "httpcore", "requests", "urllib3") or isinstance(e, ConnectionError):
        request = getattr(e, "request", None)
        url = getattr(request, "url", None)
        return f"{command}: network error{f' reaching {url}' if url else ''}: {cause[:300] or name}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("AIPC_DEBUG")
    try:
        _run(args)
    except KeyboardInterrupt:
        print("aipc: interrupted; partial outputs were removed", file=sys.stderr)
        return 130
    except Exception as e:
        message = one_line(e, f"aipc {args.command}")
        if message is None or debug:
            traceback.print_exc()
        if message is not None:
            print(f"aipc: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
