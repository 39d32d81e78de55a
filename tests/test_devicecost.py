"""What an artifact costs on the device (pipeline/devicecost.py): the figures derived from a context run's measured
points, the card lines made from them, and the context params' validation."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from pipeline import devicecost
from pipeline.params import ContextParams

MB = 2**20
# Phi-3-mini's shape: 32 layers, 32 KV heads of 96.
CONFIG = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_size": 3072,
          "max_position_embeddings": 131072}
POINTS = [{"tokens": 128, "ttft_ms": 900.0, "decode_tokens_per_s": 8.0, "peak_rss_mb": 3000.0},
          {"tokens": 1024, "ttft_ms": 9000.0, "decode_tokens_per_s": 7.5, "peak_rss_mb": 3300.0},
          {"tokens": 2048, "ttft_ms": 20000.0, "decode_tokens_per_s": 7.0, "peak_rss_mb": 3700.0},
          {"tokens": 4096, "ttft_ms": 48000.0, "decode_tokens_per_s": 6.0, "peak_rss_mb": 4700.0}]
COST = {"measured": True, "runtime": "OpenVINO 2026.4.1", "device": "CPU",
        "settings": {"KV_CACHE_PRECISION": "u8"}, "kv_cache": "u8", "kv_element_bytes": 1.0,
        "kv_cache_options": "KV_CACHE_PRECISION", "points": POINTS}


def _derived(**kw):
    args = {"weights": 2_700_000_000, "bandwidth_gb_s": 30.0, "config": CONFIG, "budgets_gib": [8, 16, 32]} | kw
    return devicecost.derive(COST, **args)


def test_memory_per_token_is_the_slope_over_the_two_longest_contexts():
    d = _derived()
    slope = (4700 - 3700) * MB / 2048  # steeper than the whole range's fit: prefill attention grows faster
    assert d["memory_bytes_per_token"] == round(slope)
    assert d["base_rss_mb"] == pytest.approx(4700 - slope * 4096 / MB, abs=0.05)
    base = 4700 * MB - slope * 4096
    assert d["fits"] == {str(g): int((g * 2**30 - base) // slope) for g in (8, 16, 32)}
    # The KV cache alone from the config: 2 x 32 layers x 32 heads x 96 at one byte (u8).
    assert d["kv_bytes_per_token"] == 2 * 32 * 32 * 96
    assert d["ttft_ms"] == {"128": 900.0, "1024": 9000.0, "2048": 20000.0, "4096": 48000.0}


def test_fits_is_capped_by_the_model_and_zero_when_nothing_fits():
    assert devicecost.fits((1000.0, 1e9), 32 * 2**30, max_context=4096) == 4096
    assert devicecost.fits((1000.0, 9 * 2**30), 8 * 2**30, max_context=4096) == 0
    flat = [dict(p, peak_rss_mb=3000.0) for p in POINTS]
    assert devicecost.memory_slope(flat) is None
    assert devicecost.derive(dict(COST, points=flat), weights=None, bandwidth_gb_s=30.0, config=CONFIG,
                             budgets_gib=[8])["fits"] == {"8": None}


def test_the_decode_bound_counts_the_weights_and_the_cache_read_per_token():
    d = _derived()
    bound = 30e9 / (2_700_000_000 + 2 * 32 * 32 * 96 * 128)
    assert d["decode"] == {"tokens": 128, "tokens_per_s": 8.0, "bound_tokens_per_s": round(bound, 2),
                           "fraction_of_bound": round(8.0 / bound, 3)}
    assert "fraction_of_bound" not in _derived(weights=None)["decode"]  # no weight file: no bound claimed


def test_card_lines_are_the_measured_record():
    record = dict(COST, derived=_derived(), host={"cpu": "Intel Xeon", "cores": 2, "bf16": ["amx_bf16"]})
    text = "\n".join(devicecost.card_lines(record))
    assert "on CPU (Intel Xeon, 2 cores, bf16: amx_bf16)" in text
    d = record["derived"]
    assert f"{d['decode']['fraction_of_bound']:.0%} of the memory-bandwidth bound" in text
    assert "4,096-token prompt 48.00 s" in text and "1,024-token prompt 9.00 s" in text
    assert f"{d['memory_bytes_per_token'] / 1024:.1f} KiB, measured" in text
    assert f"8 GiB: {d['fits']['8']:,} tokens" in text
    assert "u8: 192.0 KiB per token from the config" in text
    assert "settings: KV_CACHE_PRECISION=u8" in text
    assert devicecost.card_lines({"measured": False, "reason": "no context_cost"}) == ["Not measured: no context_cost"]


def test_the_whole_context_when_it_fits():
    record = dict(COST, derived=_derived(config=dict(CONFIG, max_position_embeddings=4096)))
    assert "32 GiB: the whole 4,096" in "\n".join(devicecost.card_lines(record))


@pytest.mark.parametrize("lengths", [[1024, 128], [4096], [128, 128]])
def test_context_lengths_are_two_or_more_increasing(lengths):
    with pytest.raises(ValidationError, match="at least two increasing context lengths"):
        ContextParams(lengths=lengths)
    assert ContextParams(lengths=[]).lengths == []  # not measured


def test_the_kv_cache_quality_line_is_the_quality_record():
    quality = {"kv_cache": {"sequence": "long", "tokens": 2304, "chunk": 64,
                            "f32": {"cosine": 0.9999, "top1": 1.0, "kl": 4.2e-07, "kl_max": 3.8e-05},
                            "u8": {"cosine": 0.99999, "top1": 0.9991, "kl": 6.3e-05, "kl_max": 0.011}}}
    [line] = devicecost.kv_cache_quality_line(quality)
    assert "2,304-token long sequence fed 64 ids a pass" in line
    assert "f32 cache: KL 4.20e-07, top-1 1.000; u8 cache: KL 6.30e-05, top-1 0.999" in line
    assert devicecost.kv_cache_quality_line({"gate": {}}) == []


def _killed(*args):
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer ends a process: no Python error


def test_a_context_run_killed_without_a_python_error_is_named_so(monkeypatch, tmp_path):
    """The smoke's context run goes on in a process of its own; killed (ort-dml-fp16 at Phi-4-mini size, 23 GB on
    the CPU provider), the record says what most likely happened, not the process pool's own words."""
    from pipeline.stages import smoke

    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setattr(smoke.backends, "get", lambda name: SimpleNamespace(context_cost=_killed))
    monkeypatch.setattr(smoke.devicecost, "bandwidth", lambda: {"numpy_copy": 10.0})
    record = smoke.context(tmp_path, SimpleNamespace(backend="any"), ContextParams(lengths=[32, 64]), tmp_path)
    assert record["measured"] is False
    assert record["reason"].startswith("its process was killed without a Python error (on Linux most likely the "
                                       "kernel's OOM killer: this machine has ")
