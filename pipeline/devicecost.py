"""What an artifact costs on the device, from what its smoke stage measured: decode speed against the memory-bandwidth
bound, time to first token at long prompts, KV-cache bytes per token of context and the longest context that fits
in a memory budget.

A backend measures points (`context_cost`: for each context length, the time to first token, decode tokens/s and
the process's peak RSS while it ran); everything derived from them is computed here once, for the smoke record, the
card, the report and bench/device_cost.py alike.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

WEIGHT_FILES = ("openvino_model.bin", "model.onnx.data", "model.onnx")
GIB = 2**30


def weight_bytes(artifact: Path) -> int | None:
    """Size of the artifact's weight file (the first of WEIGHT_FILES present), or None. Decoding a token reads each
    weight once; the embedding table is gathered a row per token, so this slightly overstates what a token reads."""
    found = [Path(artifact) / name for name in WEIGHT_FILES if (Path(artifact) / name).is_file()]
    return found[0].stat().st_size if found else None


def bandwidth(mb: int = 1024, repeats: int = 5) -> dict[str, float]:
    """The best GB/s (each the median of `repeats` passes) of three reads of an array far larger than the caches:
    numpy's copy (bytes read + written), numpy's max split over every core, and OpenVINO's CPU plugin reducing it
    (its kernels, as decoding a model reads weights). numpy's reads alone came out about 18% below what OpenVINO's
    FP16 decode reads (measured, AMD EPYC: 42.7 vs 50 GB/s), which made a bound a runtime could beat."""
    src = np.ones(mb * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    threads = os.cpu_count() or 1
    parts = np.array_split(src, threads)

    def best(fn, moved: int) -> float:
        fn()  # fault the pages in
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        # The median pass: on a shared VM one pass in a few runs read at 66 GB/s where the rest read at 43.
        return moved / float(np.median(times)) / 1e9

    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL inside the reduction
        out = {"numpy_copy": best(lambda: np.copyto(dst, src), 2 * src.nbytes),
               f"numpy_max_{threads}_threads": best(lambda: list(pool.map(np.max, parts)), src.nbytes)}
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return out
    rows = src.reshape(64, -1)
    param = ops.parameter(list(rows.shape), ov.Type.f32)
    request = ov.Core().compile_model(ov.Model([ops.reduce_max(param, [1], False)], [param]), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    tensor = ov.Tensor(rows, shared_memory=True)
    out["openvino_reduce_max"] = best(lambda: request.infer({0: tensor}, share_inputs=True), src.nbytes)
    return out


def host() -> dict:
    """The CPU the figures were measured on: its model name, cores, and the bf16 instructions it has (OpenVINO's CPU
    plugin then runs in bf16 by default; without them, f32)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {"cpu": model or "unknown", "cores": os.cpu_count(),
            "bf16": [f for f in ("avx512_bf16", "amx_bf16") if f in flags]}


def memory_slope(points: list[dict]) -> tuple[float, float] | None:
    """(bytes per token, bytes at zero context) of peak RSS over the two longest contexts measured: the steepest
    part where a one-pass prefill's attention grows faster than linearly, so what it predicts for longer contexts
    errs on the side of less. None when peak RSS did not rise (too little to rise above the noise)."""
    if len(points) < 2:
        return None
    (x0, y0), (x1, y1) = ((p["tokens"], p["peak_rss_mb"] * 2**20) for p in points[-2:])
    slope = (y1 - y0) / (x1 - x0)
    return (slope, y1 - slope * x1) if slope > 0 else None


def kv_bytes_per_token(config: dict, element_bytes: float) -> int:
    """The KV cache's bytes per token of context from the model's config: keys and values of every layer's KV heads."""
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return round(2 * config["num_hidden_layers"] * heads * head_dim * element_bytes)


def derive(cost: dict, *, weights: int | None, bandwidth_gb_s: float, config: dict, budgets_gib: list[int]) -> dict:
    """The figures a card and the report show, from a backend's measured points (`cost["points"]`) and the KV
    element size it read back (`cost["kv_element_bytes"]`)."""
    points = cost["points"]
    fit = memory_slope(points)
    max_context = config["max_position_embeddings"]
    kv = kv_bytes_per_token(config, cost["kv_element_bytes"]) if cost.get("kv_element_bytes") else None
    out: dict = {"bandwidth_gb_s": round(bandwidth_gb_s, 2), "weight_bytes": weights, "max_context": max_context,
                 "ttft_ms": {str(p["tokens"]): p["ttft_ms"] for p in points},
                 "memory_bytes_per_token": round(fit[0]) if fit else None,
                 "base_rss_mb": round(fit[1] / 2**20, 1) if fit else None,
                 "kv_bytes_per_token": kv}
    # Decode at the shortest context: each token reads the weights once and the cache so far.
    first = points[0]
    out["decode"] = {"tokens": first["tokens"], "tokens_per_s": first["decode_tokens_per_s"]}
    if weights and first["decode_tokens_per_s"]:
        bound = bandwidth_gb_s * 1e9 / (weights + (kv or 0) * first["tokens"])
        out["decode"].update(bound_tokens_per_s=round(bound, 2),
                             fraction_of_bound=round(first["decode_tokens_per_s"] / bound, 3))
    out["fits"] = {str(b): fits(fit, b * GIB, max_context) for b in budgets_gib}
    return out


def fits(fit: tuple[float, float] | None, budget_bytes: float, max_context: int) -> int | None:
    """The longest context (tokens, at most the model's) whose predicted peak RSS stays within the budget; 0 when
    even an empty context does not fit; None without a measured slope."""
    if fit is None:
        return None
    slope, base = fit
    if base > budget_bytes:
        return 0
    return int(min(max_context, (budget_bytes - base) // slope))


def card_lines(context: dict | None) -> list[str]:
    """The card's "Device cost" lines, each from the smoke record's measured `context` (or why it was not)."""
    if not context:
        return ["Not measured (no context run in smoke.json)."]
    if not context.get("measured"):
        return [f"Not measured: {context.get('reason')}"]
    d = context["derived"]
    settings = ", ".join(f"{k}={v}" for k, v in context["settings"].items())
    cpu = context.get("host") or {}
    on = f"{context['device']} ({cpu['cpu']}, {cpu['cores']} cores, bf16: {', '.join(cpu['bf16']) or 'none'})" \
        if cpu else context["device"]
    lines = [f"- Measured with {context['runtime']} on {on}; settings: {settings}."]
    if context.get("fallback"):
        lines.append(f"- {context['fallback']}.")
    dec = d["decode"]
    speed = f"- Decode: {dec['tokens_per_s']:.1f} tokens/s at a {dec['tokens']}-token context"
    if "fraction_of_bound" in dec:
        speed += (f", {dec['fraction_of_bound']:.0%} of the memory-bandwidth bound ({dec['bound_tokens_per_s']:.1f} "
                  f"tokens/s: {d['bandwidth_gb_s']:.1f} GB/s measured, over {d['weight_bytes'] / 1e6:.0f} MB of "
                  "weights and the cache so far)")
    lines.append(speed + ".")
    lines.append("- Time to first token: " + ", ".join(
        f"{int(n):,}-token prompt {ms / 1000:.2f} s" for n, ms in d["ttft_ms"].items()) + ".")
    lengths = [p["tokens"] for p in context["points"]]
    kv = (f"; the KV cache alone, {context['kv_cache']}: {d['kv_bytes_per_token'] / 1024:.1f} KiB per token from "
          "the config" if d.get("kv_bytes_per_token") else f"; KV cache {context['kv_cache']}")
    if d["memory_bytes_per_token"]:
        lines.append(f"- Memory per token of context: {d['memory_bytes_per_token'] / 1024:.1f} KiB, measured (peak "
                     f"RSS from {lengths[-2]:,} to {lengths[-1]:,} tokens, the prompt's one-pass prefill "
                     f"included){kv}.")
        lines.append("- Fits in memory (whole process, weights included, from the measured slope): " + "; ".join(
            f"{b} GiB: {_fits_text(n, d['max_context'])}" for b, n in d["fits"].items()) + ".")
    else:
        lines.append(f"- Memory per token of context: peak RSS did not rise over {lengths} tokens{kv}.")
    if context.get("kv_cache_options"):
        lines.append(f"- A smaller KV cache: {context['kv_cache_options']}")
    return lines


def kv_cache_quality_line(quality: dict | None) -> list[str]:
    """The card's line on what the KV cache's precision costs in quality (quality.json's `kv_cache`), if measured."""
    kv = (quality or {}).get("kv_cache")
    if not kv:
        return []
    scores = "; ".join(f"{precision} cache: KL {s['kl']:.2e}, top-1 {s['top1']:.3f}"
                       for precision, s in kv.items() if isinstance(s, dict))
    return [f"- Quality through the KV cache ({kv['tokens']:,}-token {kv['sequence']} sequence fed {kv['chunk']} ids "
            f"a pass, against FP32): {scores}."]


def _fits_text(tokens: int | None, max_context: int) -> str:
    if tokens is None:
        return "not measured"
    if tokens == 0:
        return "does not fit"
    return f"the whole {max_context:,}" if tokens >= max_context else f"{tokens:,} tokens"
