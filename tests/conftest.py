from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from tests import tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests first: under `-n 2 --dist loadfile` their files then start at once on their own
    worker, rather than after a worker has worked through the files before them."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint per Phi-3 family member, built once per test session."""
    base = tmp_path_factory.mktemp("tiny")
    return {kind: tiny.build(kind, base / kind) for kind in tiny.FAMILY}


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models["mini-4k"]


@pytest.fixture(scope="session")
def odd_width_model(tmp_path_factory) -> Path:
    """A tiny checkpoint whose hidden size (192) is not a multiple of 128, like SmolLM2's 576."""
    return tiny.build("mini-4k", tmp_path_factory.mktemp("odd-width") / "src", **tiny.ODD_WIDTH)


def assert_greedy(backend, artifact, variant, prompt: list[int], n: int = 12, slack: float = 1e-2) -> list[int]:
    """backend.generate()'s answer is the greedy one: each new id is the argmax of the artifact's own teacher-forced
    logits over prompt + answer (within a small tolerance: the cached decode path and the one-pass prefill round
    differently, and a random tiny model has near-ties). Fails if generate() re-templates or drops the prompt."""
    import numpy as np

    (new,) = backend.generate(artifact, variant, [prompt], n)
    assert 0 < len(new) <= n and all(isinstance(t, int) for t in new)
    logits = backend.logits(artifact, variant, prompt + new)[len(prompt) - 1: len(prompt) - 1 + len(new)]
    chosen = logits[np.arange(len(new)), new]
    margin = slack * np.abs(logits).max(-1)
    assert (chosen >= logits.max(-1) - margin).all(), (new, logits.argmax(-1).tolist())
    return new
