"""What each artifact costs on the device, every figure beside its bound or budget, from one project's smoke records.

    python bench/device_cost.py [PROJECT] [--model smollm2] [--variants a,b] [--measure] [--kv u8,f16,f32]
                                [--ort-threads N] [--dq 0,32,128] [--ov-config JSON ...] [--lengths 128,1024]
                                [--new-tokens 64]

PROJECT (default: this checkout; a bench/real_size.py dir for real size) holds metrics/<model>/<variant>/smoke.json,
whose `context` the smoke stage measured (pipeline/devicecost.py): decode tokens/s beside the memory-bandwidth bound
(ISSUE target: >= 0.8 of it), time to first token at each prompt length, memory per token of context (measured) and
the KV cache's share of it (config), the longest context within 8 / 16 / 32 GiB, and the smoke's peak RSS beside the
16 GB budget. `--measure` runs each variant's context run again here, one after another on a machine as quiet as
this run's load average says, and `--kv` each OpenVINO variant's with each KV cache precision too, side by side (the
artifacts must still be under PROJECT/artifacts); `--ort-threads N` each ONNX Runtime GenAI variant's with
`intra_op_num_threads: N` in a copy of its genai_config.json. `--dq` measures each OpenVINO INT4/INT8 variant with each
DYNAMIC_QUANTIZATION_GROUP_SIZE (the CPU plugin's on-the-fly int8 activations; its default is 32) and, where PROJECT
has the model's FP32 reference, scores the quality gate's per-sequence numbers (cosine, top-1, KL against the
reference) with the same settings as a user's runtime gets them (the plugin's defaults: bf16 where the CPU has it),
side by side. `--ov-config '{"INFERENCE_PRECISION_HINT": "f32"}'` (repeatable) measures each OpenVINO variant
again with those CPU plugin properties over its own (what a thread count or an activation precision does to decode).
`--lengths` and `--new-tokens` replace smoke.context's for the runs made here (a decode timed over
16 tokens, about a second at mini size, moves by 20% from run to run on a shared VM).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline import backends  # noqa: E402
from pipeline.backends.common import ov_context_cost  # noqa: E402
from pipeline.layout import REFERENCE  # noqa: E402
from pipeline.params import load  # noqa: E402
from pipeline.stages import quality, reference  # noqa: E402
from pipeline.stages.smoke import context  # noqa: E402

DECODE_TARGET = 0.8
BUDGET_GB = 16


def row(name: str, ctx: dict, smoke_rss_mb: float | None) -> str:
    if not ctx or not ctx.get("measured"):
        return f"| {name} | not measured: {(ctx or {}).get('reason', 'no context in smoke.json')} |"
    d = ctx["derived"]
    dec = d["decode"]
    ratio = dec.get("fraction_of_bound")
    ttft = " / ".join(f"{ms / 1000:.1f}" for ms in d["ttft_ms"].values())
    per_token = d["memory_bytes_per_token"]
    fits = " / ".join(f"{n:,}" if n is not None else "-" for n in d["fits"].values())
    settings = ctx["settings"]
    kv = settings.get("KV_CACHE_PRECISION") or settings.get("kv_cache_dtype") or ctx["kv_cache"]
    threads = settings.get("INFERENCE_NUM_THREADS") or settings.get("intra_op_num_threads") or "default"
    precision = f" {settings['INFERENCE_PRECISION_HINT']}," if "INFERENCE_PRECISION_HINT" in settings else ""
    return (f"| {name} | {ctx['device']},{precision} {threads} threads, KV {kv} | {dec['tokens_per_s']:.1f} | "
            f"{dec.get('bound_tokens_per_s', '-')} | "
            + (f"**{ratio:.2f}**" if ratio is not None and ratio < DECODE_TARGET else f"{ratio:.2f}" if ratio else "-")
            + f" | {ttft} | {per_token / 1024 if per_token else 0:.0f} | "
            f"{d['kv_bytes_per_token'] / 1024 if d['kv_bytes_per_token'] else 0:.0f} | {fits} | "
            + (f"{smoke_rss_mb / 1024:.1f} of {BUDGET_GB} |" if smoke_rss_mb else "- |"))


def gate_with(artifact: Path, reference_dir: Path, config: dict) -> dict:
    """The quality gate's per-sequence means (cosine, top-1, KL against the FP32 reference) of the IR's one-pass
    logits on the CPU plugin with `config`."""
    import numpy as np
    import openvino as ov

    from pipeline.backends.common import ov_feed
    from pipeline.backends.openvino.readback import MODEL_XML

    ref, arrays = reference.load(reference_dir)
    request = ov.Core().compile_model(str(artifact / MODEL_XML), "CPU", config).create_infer_request()
    per_sequence = []
    for seq in ref["sequences"]:
        name = seq["name"]
        request.reset_state()
        art = np.asarray(request.infer(ov_feed(arrays[f"{name}.ids"].tolist()))["logits"][0], dtype=np.float32)
        pos = quality.position_metrics(art, arrays[f"{name}.topk_ids"], arrays[f"{name}.topk_logprobs"],
                                       arrays[f"{name}.lse"])
        per_sequence.append({k: float(np.mean(v)) for k, v in pos.items()})
    return {k: float(np.mean([s[k] for s in per_sequence])) for k in ("cosine", "top1", "kl")}


def ov_cost_with(artifact: Path, variant, ctx_params, lengths: list[int], *, extra: dict) -> dict:
    """The OpenVINO backend's context_cost with `extra` CPU plugin properties over the variant's own. Module-level,
    so that context()'s spawned process can unpickle it (as `__mp_main__`)."""
    from pipeline.backends.openvino.runtime import MODEL_XML, runtime_settings

    return ov_context_cost(Path(artifact) / MODEL_XML, {**runtime_settings(variant), **extra}, lengths,
                           ctx_params.new_tokens, Path(artifact).name)


def properties(text: str) -> dict[str, str]:
    """--ov-config's value: a JSON object of CPU plugin properties (argparse names the option when this raises)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text}: not a JSON object of CPU plugin properties")
    return {str(k): str(v) for k, v in value.items()}


def dq_rows(args, params, name: str, artifact: Path, source: Path, ctx_params) -> list[str]:
    variant = params.variants[name]
    ref_dir = args.project / "artifacts" / args.model / REFERENCE
    rows = []
    stage = args.project / "metrics" / args.model / name / "quality.json"
    if stage.is_file():
        gate = json.loads(stage.read_text())["gate"]
        rows.append(f"| {name} | the quality stage's (f32, off) | | | | {gate['cosine']:.5f} | {gate['top1']:.4f} | "
                    f"{gate['kl']:.4f} |")
    for group in [int(g) for g in args.dq.split(",") if g]:
        fresh = variant.model_copy(update={"dynamic_quantization_group_size": group})
        ctx = context(artifact, fresh, ctx_params, source)
        dec = ctx["derived"]["decode"] if ctx.get("measured") else {}
        ttft = " / ".join(f"{ms / 1000:.2f}" for ms in ctx["derived"]["ttft_ms"].values()) if dec else "-"
        gate = gate_with(artifact, ref_dir, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": str(group)}) \
            if ref_dir.is_dir() else None
        scored = f"{gate['cosine']:.5f} | {gate['top1']:.4f} | {gate['kl']:.4f}" if gate else "- | - | -"
        ran = ctx.get("settings", {})
        rows.append(f"| {name} | {group} ({ran.get('DYNAMIC_QUANTIZATION_GROUP_SIZE', '?')} read back, "
                    f"{ran.get('INFERENCE_PRECISION_HINT', '?')}) | {dec.get('tokens_per_s', 0):.2f} | "
                    f"{dec.get('fraction_of_bound', 0):.2f} | {ttft} | {scored} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path, nargs="?", default=ROOT)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variants", default="", help="comma-separated; default: every variant with a smoke.json")
    ap.add_argument("--measure", action="store_true", help="measure each variant's context run again now")
    ap.add_argument("--ort-threads", type=int, default=0,
                    help="also measure ONNX Runtime GenAI variants with this intra_op_num_threads in genai_config")
    ap.add_argument("--kv", default="", help="also measure OpenVINO variants with these KV cache precisions")
    ap.add_argument("--dq", default="", help="measure and score OpenVINO INT4/INT8 variants with these "
                                             "DYNAMIC_QUANTIZATION_GROUP_SIZE values (0: off)")
    ap.add_argument("--ov-config", action="append", default=[], type=properties, metavar="JSON",
                    help="also measure OpenVINO variants with these CPU plugin properties over their own (repeatable)")
    ap.add_argument("--lengths", default="", help="prompt lengths for the runs made here (default: params.yaml's)")
    ap.add_argument("--new-tokens", type=int, default=0,
                    help="tokens decoded after each prompt in the runs made here (default: params.yaml's)")
    args = ap.parse_args()
    params = load(args.project / "params.yaml")
    ctx_params = params.smoke.context.model_copy(update={
        **({"lengths": [int(n) for n in args.lengths.split(",")]} if args.lengths else {}),
        **({"new_tokens": args.new_tokens} if args.new_tokens else {})})
    metrics = args.project / "metrics" / args.model
    names = args.variants.split(",") if args.variants else sorted(
        p.name for p in metrics.iterdir() if (p / "smoke.json").is_file())
    print(f"{args.project} {args.model}: load average (1 min) {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    lengths = None
    head = ("| variant | runs on | decode tok/s | bound tok/s | of bound | first token s at {} tokens | "
            "KiB/token measured | KV KiB/token (config) | fits 8 / 16 / 32 GiB (tokens) | smoke peak GB |")
    rows, dq = [], []
    for name in names:
        record = metrics / name / "smoke.json"
        if not record.is_file() and not args.measure:
            sys.exit(f"{record}: no smoke record; run its smoke stage, or pass --measure")
        smoke = json.loads(record.read_text()) if record.is_file() else {}
        ctx = smoke.get("context") or {}
        variant = params.variants[name]
        artifact, source = (args.project / "artifacts" / args.model / n for n in (name, "source"))
        label = name
        if args.measure:
            ctx = context(artifact, variant, ctx_params, source)
            label = f"{name} (measured now)"
        rows.append(row(label, ctx, smoke.get("peak_rss_mb")))
        lengths = lengths or [p["tokens"] for p in ctx.get("points", [])]
        if args.ort_threads and variant.backend == "onnx_genai":
            with tempfile.TemporaryDirectory(dir=artifact.parent) as tmp:
                copy = Path(tmp) / name
                shutil.copytree(artifact, copy, copy_function=os.link)  # hard links: no bytes copied
                config = json.loads((copy / "genai_config.json").read_text())
                config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.ort_threads
                (copy / "genai_config.json").unlink()  # a link to the artifact's own file: not written through
                (copy / "genai_config.json").write_text(json.dumps(config))
                again = context(copy, variant, ctx_params, source)
            rows.append(row(f"{label} with intra_op_num_threads {args.ort_threads}", again, None))
        for precision in [p for p in args.kv.split(",") if p] if variant.backend == "openvino" else []:
            fresh = variant.model_copy(update={"kv_cache_precision": precision})
            again = context(artifact, fresh, ctx_params, source)
            rows.append(row(f"{label} with KV {precision}", again, None))
        for extra in args.ov_config if variant.backend == "openvino" else []:
            # context() runs the backend's context_cost in a process of its own: this one, properties added
            override = functools.partial(ov_cost_with, extra=extra)
            with mock.patch.object(backends.get("openvino"), "context_cost", override):
                again = context(artifact, variant, ctx_params, source)
            rows.append(row(f"{label} with {', '.join(f'{k} {v}' for k, v in extra.items())}", again, None))
        if args.dq and variant.backend == "openvino" and variant.weight_format != "fp16":
            dq += dq_rows(args, params, name, artifact, source, ctx_params)
    print(head.format(", ".join(f"{n:,}" for n in lengths or [])))
    print("|" + "---|" * 10)
    print("\n".join(rows))
    print(f"decode target: >= {DECODE_TARGET} of the bound (bold: below); budget: smoke within {BUDGET_GB} GB")
    if dq:
        print("\n| variant | DYNAMIC_QUANTIZATION_GROUP_SIZE | decode tok/s | of bound | first token s at {} | "
              "cosine | top-1 | KL (gate: per-sequence means vs the FP32 reference) |".format(
                  " / ".join(map(str, ctx_params.lengths))))
        print("|" + "---|" * 8)
        print("\n".join(dq))
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
