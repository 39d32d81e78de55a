"""This machine's memory bandwidth, and INT4 decode tokens/s as a fraction of the bandwidth bound.

    python bench/bandwidth.py PROJECT [--model smollm2] [--fresh]

Decoding one token reads every weight once, so tokens/s can be at most bandwidth / weight bytes. Weight bytes are
the artifact's weight file (openvino_model.bin, model.onnx.data): that slightly overstates what one token reads
(the embedding table is gathered one row per token), so the bound is a little low and the fraction a little high.
Bandwidth is the best of N passes of a numpy copy (read + write counted) and of a sum over all cores (read only),
on arrays far larger than the caches. Decode tokens/s come from smoke.json (warm prompts, as the report takes them),
and with --fresh also from a new greedy generation of 64 tokens in each runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.devicecost import bandwidth, weight_bytes  # noqa: E402
from pipeline.stages.report import decode_speed  # noqa: E402

VARIANTS = ("ov-int4", "ort-cpu-int4")


def bound_tokens_per_s(bandwidth_gb_s: float, weight_bytes_per_token: int) -> float:
    """The most tokens/s a decoder can reach if each token reads `weight_bytes_per_token` at `bandwidth_gb_s`."""
    return bandwidth_gb_s * 1e9 / weight_bytes_per_token


def fraction_of_bound(tokens_per_s: float, bandwidth_gb_s: float, weight_bytes_per_token: int) -> float:
    return tokens_per_s / bound_tokens_per_s(bandwidth_gb_s, weight_bytes_per_token)


def fresh_tokens_per_s(artifact: Path, backend: str, new_tokens: int = 64) -> float:
    prompt = "Write a short story about a lighthouse keeper."
    if backend == "openvino":
        import openvino_genai as ov_genai

        pipe = ov_genai.LLMPipeline(str(artifact), "CPU", INFERENCE_PRECISION_HINT="f32")
        cfg = ov_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        pipe.generate(prompt, cfg)  # warm-up
        result = pipe.generate([prompt], cfg)
        return 1000.0 / result.perf_metrics.get_tpot().mean
    import onnxruntime_genai as og

    model = og.Model(str(artifact))
    ids = og.Tokenizer(model).encode(prompt)
    rates = []
    for _ in range(2):  # the first is a warm-up
        params = og.GeneratorParams(model)
        # min_length: no early stop at EOS, so every run decodes the same number of tokens
        params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        gen.generate_next_token()  # prefill + first token
        t0, n = time.perf_counter(), 0
        while not gen.is_done():
            gen.generate_next_token()
            n += 1
        rates.append(n / (time.perf_counter() - t0))
    return rates[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path, nargs="?", default=ROOT)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--fresh", action="store_true", help="also time a new 64-token greedy generation per variant")
    args = ap.parse_args()
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    bw = bandwidth()
    for name, gbs in bw.items():
        print(f"  bandwidth {name:<14} {gbs:6.2f} GB/s")
    peak = max(bw.values())
    print(f"  bound uses the best: {peak:.2f} GB/s")
    for variant in VARIANTS:
        artifact = args.project / "artifacts" / args.model / variant
        smoke = json.loads((args.project / "metrics" / args.model / variant / "smoke.json").read_text())
        wbytes = weight_bytes(artifact)
        if wbytes is None:
            print(f"{variant}: no weight file under {artifact}")
            continue
        bound = bound_tokens_per_s(peak, wbytes)
        print(f"{variant}: weights {wbytes / 1e6:.1f} MB -> bound {bound:.0f} tokens/s")
        speed = decode_speed(smoke)
        rates = {f"smoke.json ({speed['device']})": speed["tokens_per_s"]} if speed else {}
        if args.fresh:
            backend = "openvino" if (artifact / "openvino_model.xml").is_file() else "onnx_genai"
            rates["fresh 64-token greedy (CPU)"] = fresh_tokens_per_s(artifact, backend)
        for where, tps in rates.items():
            print(f"  decode {tps:7.1f} tokens/s from {where}: {fraction_of_bound(tps, peak, wbytes):.1%} of the bound")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
