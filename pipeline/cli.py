"""`aipc`: one subcommand per DVC stage. dvc.yaml calls these and nothing else."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from pipeline.errors import PipelineError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aipc", description=__doc__)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--root", type=Path, default=Path("."), help="project root holding artifacts/ and metrics/")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate params.yaml and exit")
    for name, help_ in [
        ("fetch", "materialise a model's checkpoint into artifacts/<model>/source"),
        ("ir", "export a model's FP16 OpenVINO IR (the base of the OpenVINO variants)"),
        ("reference", "FP32 torch results for the eval set into artifacts/<model>/reference"),
    ]:
        sub.add_parser(name, help=help_).add_argument("model")
    sub.add_parser("report", help="every artifact's quality in one table; fails on a threshold miss unless "
                   "quality.enforce is false")
    sub.add_parser("native", help="runtime wheels or a source build of one target into artifacts/native/<target>")\
        .add_argument("target")
    sub.add_parser("runner-wheel", help="our C++ OpenVINO runner as a wheel (scikit-build-core) into "
                   "artifacts/native/ov_runner")
    sub.add_parser("runner", help="our C++ OpenVINO runner vs openvino-genai on <model>'s FP16 IR").add_argument("model")
    from pipeline import publish, toolchain

    toolchain.add_parser(sub)
    publish.add_parser(sub)
    for name, help_ in [
        ("export", "build one variant into artifacts/<model>/<variant>"),
        ("smoke", "run one artifact with its runtime; metrics/<model>/<variant>/smoke.json"),
        ("quality", "score one artifact against the FP32 reference; metrics/<model>/<variant>/quality.json"),
        ("package", "release dir (artifact, model card, manifest, provenance) in releases/<model>/<variant>"),
    ]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("model")
        s.add_argument("variant")
    return p


def _run(args: argparse.Namespace) -> None:
    from pipeline import params as params_mod
    from pipeline.layout import SOURCE, Layout

    params = params_mod.load(args.params)
    if args.command == "check":
        print(f"{args.params}: ok ({len(params.models)} model(s), {len(params.variants)} variant(s))")
        return
    if args.command == "report":
        from pipeline import report

        report.stage(params, args.root)
        return
    if args.command == "native":
        from pipeline import fsutil, native
        from pipeline.record import measured

        if args.target not in params.native:
            raise PipelineError(f"unknown native target {args.target!r} (params.yaml native: {', '.join(params.native)})")
        with measured(f"build_native@{args.target}") as rec:
            rec["build"] = native.run(params.native[args.target], args.root / "artifacts" / "native" / args.target)
        fsutil.write_json(args.root / "metrics" / "native" / f"{args.target}.json", rec)
        return
    if args.command == "runner-wheel":
        from pipeline import fsutil, native
        from pipeline.record import measured

        with measured("runner_wheel") as rec:
            rec["build"] = native.runner_wheel(args.root / "artifacts" / "native" / "ov_runner",
                                               args.root / "build_native" / "out" / "ov_runner")
        fsutil.write_json(args.root / "metrics" / "native" / "ov_runner.json", rec)
        return
    if args.command in ("toolchain", "publish"):
        from pipeline import publish, toolchain

        {"toolchain": toolchain, "publish": publish}[args.command].command(args, params, args.root)
        return
    if args.model not in params.models:
        raise PipelineError(f"unknown model {args.model!r} (params.yaml models: {', '.join(params.models)})")
    variant = getattr(args, "variant", None)
    if variant is not None and variant not in params.variants:
        raise PipelineError(f"unknown variant {variant!r} (params.yaml variants: {', '.join(params.variants)})")
    layout = Layout(args.root)

    if args.command == "fetch":
        from pipeline import fetch, fsutil
        from pipeline.record import measured

        with measured(f"fetch@{args.model}") as rec:
            rec["fetch"] = fetch.run(args.model, params.models[args.model], layout.artifact(args.model, SOURCE))
        fsutil.write_json(layout.metrics(args.model, SOURCE, "fetch"), rec)
    elif args.command == "ir":
        from pipeline import export

        export.run_ir(params, args.model, layout)
    elif args.command == "export":
        from pipeline import export

        export.run(params, args.model, variant, layout)
    elif args.command == "runner":
        from pipeline import fsutil, native

        from pipeline.layout import IR_FP16

        ir = layout.artifact(args.model, IR_FP16)
        fsutil.verify_manifest(ir)
        wheel = native.runner_wheel_file(args.root / "artifacts" / "native" / "ov_runner")
        rec = native.runner_smoke(ir, [p.text for p in params.smoke.prompts], params.smoke.max_new_tokens, wheel)
        fsutil.write_json(layout.metrics(args.model, IR_FP16, "runner"), rec)
        if rec["status"] != "passed":
            raise PipelineError(f"native runner on {args.model}/{IR_FP16}: {rec['reason']}")
    elif args.command == "reference":
        from pipeline import reference

        reference.stage(params, args.model, layout)
    elif args.command == "quality":
        from pipeline import quality

        quality.stage(params, args.model, variant, layout)
    elif args.command == "package":
        from pipeline import package

        package.stage(params, args.model, variant, layout)
    elif args.command == "smoke":
        from pipeline import smoke

        smoke.run(params, args.model, variant, layout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except PipelineError as e:
        if args.debug or os.environ.get("AIPC_DEBUG"):
            traceback.print_exc()
        print(f"aipc: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aipc: interrupted; partial outputs were removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
