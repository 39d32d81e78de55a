"""The quality gate: a variant's thresholds (by its name, else its precision family) and the metrics of its
quality.json `gate` record that miss them. The report stage applies it to every artifact, the package stage to the
one it releases."""

from __future__ import annotations

import math

from pipeline.params import QualityParams, Thresholds

# threshold field -> (metric in quality.json's `gate`, is a lower bound)
LIMITS = {
    "min_cosine": ("cosine", True),
    "min_top1": ("top1", True),
    "max_kl": ("kl", False),
    "max_ppl_ratio": ("ppl_ratio", False),
    "min_similarity": ("similarity", True),
}


def limits_for(quality: QualityParams, name: str, variant) -> Thresholds | None:
    """A variant's thresholds: an entry under its own name wins over its precision family's."""
    return quality.thresholds.get(name) or quality.thresholds.get(variant.family)


def misses(gate: dict, limits: Thresholds | None) -> list[str]:
    """'metric value vs limit' for every metric of `gate` past its limit (a missing value is a miss too)."""
    out = []
    for field, (metric, lower) in LIMITS.items():
        limit = getattr(limits, field, None) if limits else None
        if limit is None:
            continue
        value = gate.get(metric)
        if value is None or not math.isfinite(value):
            out.append(f"{metric} not measured (limit {limit})")
        elif (value < limit) if lower else (value > limit):
            out.append(f"{metric} {value:.6g} {'<' if lower else '>'} {limit}")
    return out
