"""Stage `report`: one table of every configured model x variant's quality (variant x metric), and the gate.

One row per model in params.yaml x variant in params.yaml, nothing else (metrics of a model or variant since removed
are not read): "not configured" where the model's `variants:` leaves the variant out; "failed" with the reason where
one of its stages failed (the failure record the CLI leaves, pipeline/layout.py `failure`: DVC keeps nothing of a
failed stage); "not built" where its stages have not run. For the others it reads metrics/<model>/<variant>/
quality.json, checks its `gate` numbers against the thresholds of the variant (by name, else its precision family)
(quality.thresholds in params.yaml), prints the table, writes reports/quality.json, and fails naming every build
that did not complete and every variant and metric that missed, unless quality.enforce is false (then the misses
are only listed). As a DVC stage it runs only when every stage upstream succeeded; after a failure `aipc repro` runs
it outside DVC (`dvc repro --keep-going` skips it), so the failures are reported by name.
The family comes from the variant's params as they are now, so changing a threshold re-gates without re-measuring.
The report is not under metrics/: the stage depends on that whole directory (which is how DVC orders it after every
quality stage), and DVC refuses a stage whose output lies inside its own dependency.

Each row also carries the artifact's performance, read from the metrics its other stages wrote: time to first token
and decode tokens/s of its first smoke run on CPU (the device is recorded beside them), peak RSS of smoke and
quality, bytes on disk, and the export stage's wall time and peak RSS; from the smoke's context run
(pipeline/devicecost.py), decode as a fraction of the bandwidth bound, the longest prompt's time to first token,
memory KiB per token of context and the longest context that fits in 16 GiB. `exports` lists every export stage of the
model (ir-fp16 included). The same rows feed reports/plots.json (for `dvc plots`) and reports/index.html with its
PNG charts (pipeline/html_report.py), which are written before the gate raises, so a failing run still explains
itself.

A model whose fetch record (metrics/<model>/source/fetch.json) says its source is synthetic has seeded random
weights (pipeline/sources/synthetic.py): its numbers are measured and shown, but it is not gated: its rows read
"ungated (random weights)" and never count as misses.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline import backends, fsutil
from pipeline.devicecost import weight_bytes
from pipeline.errors import PipelineError
from pipeline.gate import limits_for, misses
from pipeline.layout import REFERENCE, SOURCE, Layout
from pipeline.params import QualityParams

REPORT = "reports/quality.json"
PLOTS = "reports/plots.json"
HTML = "reports/index.html"
COLUMNS = [("cosine", "{:.5f}"), ("top1", "{:.3f}"), ("kl", "{:.2e}"), ("ppl_ratio", "{:.4f}"),
           ("similarity", "{:.3f}"), ("answers_identical", "{:.2f}")]


def run(quality: QualityParams, variants: Mapping, builds: Mapping[str, Sequence[str]], metrics_root: Path, out: Path,
        *, artifacts_root: Path | None = None, plots: Path | None = None, html: Path | None = None) -> tuple[str, list[str]]:
    """Return (table, misses) and write them to `out` (JSON); raise PipelineError if a build did not complete, or
    on any threshold miss if quality.enforce.

    `builds` is model -> the variants it builds (params.yaml's models, each with its `variants:`): there is one row
    per model x variant of `variants`, and none for anything else under `metrics_root`. `artifacts_root` (default:
    beside `metrics_root`) is read for bytes on disk, and the failure records beside it (Layout.failure) for the
    reasons of failed stages; `plots` and `html`, when given, are where the dvc-plots rows and the HTML page (with
    its PNGs beside it) go.
    """
    metrics_root = Path(metrics_root)
    artifacts_root = Path(artifacts_root) if artifacts_root else metrics_root.parent / "artifacts"
    failed = Layout(metrics_root.parent).failure
    rows, failures, unbuilt = [], [], []
    for model, chosen in builds.items():
        for name, variant in variants.items():
            fam = variant.family
            row = {"model": model, "variant": name, "family": fam}
            if name not in chosen:
                rows.append({**row, "status": NOT_CONFIGURED})
                continue
            reason = failure(model, name, variant, metrics_root, failed)
            path = metrics_root / model / name / "quality.json"
            if reason or not path.is_file():
                status = "failed" if reason else NOT_BUILT
                rows.append({**row, "status": status, "reason": reason})
                unbuilt.append(f"{model}/{name}: {reason or NOT_BUILT}")
                continue
            rec = json.loads(path.read_text())
            limits = limits_for(quality, name, variant)
            random_weights = is_synthetic(metrics_root / model)
            missed = [] if random_weights else misses(rec["gate"], limits)
            failures += [f"{model}/{name}: {m}" for m in missed]
            status = (RANDOM_WEIGHTS if random_weights else "ungated" if limits is None else "MISS" if missed
                      else "ok")
            rows.append({**row, **rec["gate"], "status": status, "misses": missed,
                         **performance(path.parent, artifacts_root / model / name,
                                       quality_rss_mb=rec.get("peak_rss_mb"))})
    built = [r for r in rows if "misses" in r]
    exports = export_stages(metrics_root, {r["model"] for r in built}, variants)
    table = _table(rows) + "\n\n" + _perf_table(built)
    fsutil.write_json(out, {"enforce": quality.enforce, "rows": rows, "exports": exports, "misses": failures,
                            "not_built": unbuilt})
    if plots:
        fsutil.write_json(plots, {"rows": [{k: r.get(k) for k in PLOT_FIELDS} for r in built]})
    if html:
        from pipeline.stages import html_report  # matplotlib: imported only where the page is drawn

        html_report.write(rows, exports, failures, quality.enforce, Path(html), not_built=unbuilt)
    print(table)
    if failures:
        print("\nmissed thresholds:\n" + "\n".join(f"  {f}" for f in failures), file=sys.stderr)
    if unbuilt:
        print("\nnot built:\n" + "\n".join(f"  {f}" for f in unbuilt), file=sys.stderr)
    errors = [f"{len(unbuilt)} of {sum(r['status'] != NOT_CONFIGURED for r in rows)} model x variant builds did "
              f"not complete: {'; '.join(unbuilt)}"] if unbuilt else []
    if failures and quality.enforce:
        errors.append(f"quality gate: {len(failures)} miss(es): {'; '.join(failures)} "
                      "(set quality.enforce: false in params.yaml to explore without the gate)")
    if errors:
        raise PipelineError("; ".join(errors))
    return table, failures


NOT_CONFIGURED = "not configured"  # the model's `variants:` leaves this variant out
NOT_BUILT = "not built"  # no quality record and no failure: its stages have not run (yet)


def failure(model: str, name: str, variant, metrics_root: Path, failed) -> str | None:
    """The reason the last run of one of this artifact's stages failed, first stage first, or None.

    A stage's failure record (Layout.failure, written by the CLI) counts while the stage's own metrics file is
    absent or older: DVC deletes a stage's outputs, metrics included, before running it; the next run of the
    stage deletes the record first; a restore from DVC's run cache writes the metrics anew."""
    chain = [(SOURCE, "fetch"), *[(made, "export") for made in backends.get(variant.backend).inputs(variant)],
             (name, "export"), (name, "smoke"), (REFERENCE, "reference"), (name, "quality")]
    for stage_name, kind in chain:
        record = failed(model, stage_name, kind)
        if not record.is_file():
            continue
        done = metrics_root / model / stage_name / f"{kind}.json"
        if done.is_file() and done.stat().st_mtime_ns > record.stat().st_mtime_ns:
            continue
        rec = json.loads(record.read_text())
        return f"{rec.get('command')}: {rec.get('error')}"
    return None


RANDOM_WEIGHTS = "ungated (random weights)"


def is_synthetic(model_metrics: Path) -> bool:
    """Whether the model's fetch record says its checkpoint is synthetic (random weights)."""
    fetch = _load(Path(model_metrics) / "source" / "fetch.json") or {}
    got = fetch.get("fetch") or {}
    return got.get("source") == "synthetic" or got.get("synthetic") is True


PERF_COLUMNS = [("size_mb", "{:.1f}"), ("ttft_ms", "{:.1f}"), ("tokens_per_s", "{:.1f}"),
                ("decode_of_bound", "{:.0%}"), ("ttft_long_s", "{:.2f}"), ("kib_per_token", "{:.1f}"),
                ("fits_16gib", "{:,}"), ("smoke_rss_mb", "{:.0f}"), ("export_wall_s", "{:.1f}"),
                ("export_rss_mb", "{:.0f}")]
PLOT_FIELDS = ["model", "variant", "family", "size_mb", "cosine", "top1", "kl", "ppl_ratio", "similarity", "ttft_ms",
               "tokens_per_s", "device", "fallback"]


def decode_speed(smoke: dict) -> dict | None:
    """Time to first token (ms) and decode tokens/s of the first run that executed on CPU (else the first run).

    Medians over the prompts after the first, which carries the runtime's warm-up (measured on ov-fp16: 168 ms to
    the first token on the first prompt, 39 ms on the second); over all prompts when there is only one.
    """
    runs = smoke.get("runs") or []
    run_ = next((r for r in runs if r.get("device") == "CPU"), runs[0] if runs else None)
    prompts = [p for p in (run_ or {}).get("prompts", []) if p.get("tokens_per_s") is not None]
    if not prompts:
        return None
    warm = prompts[1:] or prompts
    return {
        "ttft_ms": statistics.median(p["ttft_ms"] for p in warm if p.get("ttft_ms") is not None)
        if any(p.get("ttft_ms") is not None for p in warm) else None,
        "tokens_per_s": statistics.median(p["tokens_per_s"] for p in warm),
        "device": run_["device"],
        "fallback": run_.get("fallback"),
    }


def disk_bytes(artifact: Path, export: dict | None = None) -> int | None:
    """Bytes of every file under the artifact dir; without the dir, the sizes its export.json lists (if it does)."""
    artifact = Path(artifact)
    if artifact.is_dir():
        return sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
    files = ((export or {}).get("export") or {}).get("files")
    return sum(files.values()) if isinstance(files, dict) else None


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def performance(metrics_dir: Path, artifact: Path, quality_rss_mb: float | None = None) -> dict:
    """The performance columns of one artifact's row; a value its stages did not record is None."""
    smoke, export = _load(Path(metrics_dir) / "smoke.json"), _load(Path(metrics_dir) / "export.json")
    speed = decode_speed(smoke) if smoke else None
    size, weights = disk_bytes(artifact, export), weight_bytes(artifact)
    return {
        "size_bytes": size,
        "size_mb": round(size / 1e6, 3) if size is not None else None,
        "weights_bytes": weights,
        "ttft_ms": speed and speed["ttft_ms"],
        "tokens_per_s": speed and speed["tokens_per_s"],
        "device": speed and speed["device"],
        "fallback": speed and speed["fallback"],
        "smoke_rss_mb": smoke and smoke.get("peak_rss_mb"),
        **device_cost(smoke),
        "quality_rss_mb": quality_rss_mb,
        "export_wall_s": export and export.get("wall_s"),
        "export_rss_mb": export and export.get("peak_rss_mb"),
    }


def device_cost(smoke: dict | None) -> dict:
    """The report's device-cost columns from smoke.json's context run: decode as a fraction of the bandwidth bound,
    time to first token at the longest prompt measured, memory KiB per token of context, the longest context within
    16 GiB."""
    derived = ((smoke or {}).get("context") or {}).get("derived") or {}
    ttft = derived.get("ttft_ms") or {}
    longest = max(ttft, key=int) if ttft else None
    per_token = derived.get("memory_bytes_per_token")
    return {"decode_of_bound": (derived.get("decode") or {}).get("fraction_of_bound"),
            "ttft_long_tokens": int(longest) if longest else None,
            "ttft_long_s": round(ttft[longest] / 1000, 3) if longest else None,
            "kib_per_token": round(per_token / 1024, 2) if per_token else None,
            "fits_16gib": (derived.get("fits") or {}).get("16")}


def export_stages(metrics_root: Path, models: set[str], variants: Mapping) -> list[dict]:
    """Wall time and peak RSS of every export stage (ir-fp16 and each variant's export) of the reported models."""
    out = []
    for model in sorted(models):
        for name in ["ir-fp16", *variants]:
            rec = _load(Path(metrics_root) / model / name / "export.json")
            if rec:
                out.append({"model": model, "stage": rec.get("stage", f"export@{model}-{name}"),
                            "wall_s": rec.get("wall_s"), "peak_rss_mb": rec.get("peak_rss_mb")})
    return out


def _perf_table(rows: list[dict]) -> str:
    head = ["model/variant", *(c for c, _ in PERF_COLUMNS), "device"]
    body = [[f"{r['model']}/{r['variant']}",
             *(fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in PERF_COLUMNS),
             (r.get("device") or "-") + (f" ({r['fallback']})" if r.get("fallback") else "")]
            for r in rows]
    return _format(head, body)


def _table(rows: list[dict]) -> str:
    head = ["model/variant", "family", *(c for c, _ in COLUMNS), "status"]
    body = [
        [f"{r['model']}/{r['variant']}", r["family"],
         *(fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in COLUMNS),
         r["status"] + (f": {r['reason']}" if r.get("reason") else "")]
        for r in rows
    ]
    return _format(head, body)


def _format(head: list[str], body: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def stage(params, layout) -> tuple[str, list[str]]:
    """`aipc report`: reads params.quality (thresholds, enforce) and params.variants (for each family)."""
    root = Path(layout.root)
    builds = {model: params.variants_of(model) for model in params.models}
    return run(params.quality, params.variants, builds, root / "metrics", root / REPORT,
               artifacts_root=root / "artifacts", plots=root / PLOTS, html=root / HTML)
