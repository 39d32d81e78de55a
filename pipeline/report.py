"""Stage `report`: one table of every artifact's quality (variant x metric), and the gate.

Reads every metrics/<model>/<variant>/quality.json, checks its `gate` numbers against the thresholds of the
variant's family (quality.thresholds in params.yaml), prints the table, writes reports/quality.json, and fails
naming every variant and metric that missed, unless quality.enforce is false (then the misses are only listed).
The family comes from the variant's params as they are now, so changing a threshold re-gates without re-measuring.
The report is not under metrics/: the stage depends on that whole directory (which is how DVC orders it after every
quality stage), and DVC refuses a stage whose output lies inside its own dependency.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from pipeline import fsutil
from pipeline.errors import PipelineError
from pipeline.quality import QualityParams, family, misses

REPORT = "reports/quality.json"
COLUMNS = [("cosine", "{:.5f}"), ("top1", "{:.3f}"), ("kl", "{:.2e}"), ("ppl_ratio", "{:.4f}"),
           ("answers_identical", "{:.2f}")]


def run(quality: QualityParams, variants: Mapping, metrics_root: Path, out: Path) -> tuple[str, list[str]]:
    """Return (table, misses) and write them to `out` (JSON); raise PipelineError on any miss if quality.enforce."""
    metrics_root = Path(metrics_root)
    paths = sorted(metrics_root.glob("*/*/quality.json"))
    if not paths:
        raise PipelineError(f"{metrics_root}: no */*/quality.json to report on; run the quality stages first")
    rows, failures = [], []
    for path in paths:
        model, name = path.parent.parent.name, path.parent.name
        if name not in variants:  # left over from a variant since removed from params.yaml
            continue
        rec = json.loads(path.read_text())
        fam = family(variants[name])
        limits = quality.thresholds.get(fam)
        missed = misses(rec["gate"], limits)
        failures += [f"{model}/{name}: {m}" for m in missed]
        status = "ungated" if limits is None else "MISS" if missed else "ok"
        rows.append({"model": model, "variant": name, "family": fam, **rec["gate"], "status": status,
                     "misses": missed})
    table = _table(rows)
    fsutil.write_json(out, {"enforce": quality.enforce, "rows": rows, "misses": failures})
    print(table)
    if failures:
        print("\nmissed thresholds:\n" + "\n".join(f"  {f}" for f in failures), file=sys.stderr)
        if quality.enforce:
            raise PipelineError(
                f"quality gate: {len(failures)} miss(es): {'; '.join(failures)} "
                "(set quality.enforce: false in params.yaml to explore without the gate)"
            )
    return table, failures


def _table(rows: list[dict]) -> str:
    head = ["model/variant", "family", *(c for c, _ in COLUMNS), "status"]
    body = [
        [f"{r['model']}/{r['variant']}", r["family"],
         *(fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in COLUMNS), r["status"]]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def stage(params, root: Path) -> tuple[str, list[str]]:
    """`aipc report`: reads params.quality (thresholds, enforce) and params.variants (for each family)."""
    root = Path(root)
    return run(params.quality, params.variants, root / "metrics", root / REPORT)
