"""The calibration set of data-aware weight compression (pipeline/calibration/default.yaml): chat conversations,
and the check that they never overlap the eval set the quality gate scores.

Overlap means leakage: an artifact calibrated on the very text it is scored on would look better than it is. Two
texts overlap when a calibration user turn equals an eval prompt, or when any run of OVERLAP_WORDS words (lower-cased,
punctuation dropped) occurs in both. Six words is long enough that common phrases ("in one sentence", "the capital
of") never trip it and short enough that a copied clause always does.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline.errors import PipelineError

OVERLAP_WORDS = 6
ROLES = ("user", "assistant", "system")


def load(path: str | Path) -> list[list[dict[str, str]]]:
    """The conversations of a calibration set file, each a list of {role, content} messages."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot read the calibration set: {str(e).splitlines()[0]}") from None
    convs = (raw or {}).get("conversations") if isinstance(raw, dict) else None
    ok = isinstance(convs, list) and convs and all(
        isinstance(c, list) and c and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
            and isinstance(m["content"], str) and m["content"] for m in c) for c in convs)
    if not ok:
        raise PipelineError(f"{path}: the calibration set needs `conversations`: a list of conversations, each a "
                            f"list of {{role: {'|'.join(ROLES)}, content: <text>}} messages")
    return convs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(text: str) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i:i + OVERLAP_WORDS]) for i in range(len(w) - OVERLAP_WORDS + 1)}


def overlap(conversations: list[list[dict[str, str]]], eval_prompts: list[str], eval_text: str) -> list[str]:
    """What a calibration set shares with an eval set (empty: disjoint), each finding as a short phrase."""
    found = []
    prompts = {" ".join(_words(p)) for p in eval_prompts}
    eval_grams = set().union(*(_ngrams(t) for t in [*eval_prompts, eval_text]))
    for conv in conversations:
        for m in conv:
            if m["role"] == "user" and " ".join(_words(m["content"])) in prompts:
                found.append(f"the eval prompt {m['content']!r}")
            found += [f"'{' '.join(g)}'" for g in sorted(_ngrams(m["content"]) & eval_grams)]
    return found


def require_disjoint(calibration: str | Path, evalset: str | Path) -> None:
    """Fail in one line if the calibration set overlaps the eval set's prompts or text."""
    raw = yaml.safe_load(Path(evalset).read_text()) or {}
    found = overlap(load(calibration), list(raw.get("prompts") or []), str(raw.get("text") or ""))
    if found:
        raise PipelineError(f"{calibration} overlaps the eval set {evalset}: {', '.join(found[:3])}"
                            + (f" and {len(found) - 3} more" if len(found) > 3 else "")
                            + "; calibrating on scored text would inflate the quality gate")
