"""ONNX Runtime GenAI's float32 and int8 KV caches side by side, with genai's shared past/present buffer on and off:
first token and decode speed at each prompt length, one process, every core (as the smoke's context run).

    python bench/ort_kv_cache.py [--root .] [--model smollm2] [--float ort-cpu-int4] [--int8 ort-cpu-int4-kv8]
                                 [--lengths 128,1024,2048] [--new-tokens 16]

Reads the two artifacts under ROOT/artifacts/MODEL/ (a `dvc repro` or `bench/real_size.py --keep` made them). The
builder writes past_present_share_buffer false for an int8 cache and true for a float one; each row overrides it
through og.Config.overlay, the artifact's files untouched. Prints each row's figures and the int8 rows' ratio to the
float32 cache with the builder's setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def measure(artifact: Path, share: bool, lengths: list[int], new_tokens: int) -> list[tuple[float, float]]:
    """(first token s, decode tokens/s) per length, random ids, greedy, no early stop."""
    import onnxruntime_genai as og

    config = og.Config(str(artifact))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": len(os.sched_getaffinity(0))}}}, "search": {"past_present_share_buffer": share}}))
    model = og.Model(config)
    vocab = json.loads((artifact / "genai_config.json").read_text())["model"]["vocab_size"]
    rng = np.random.default_rng(0)
    out = []
    for n in lengths:
        params = og.GeneratorParams(model)
        total = n + new_tokens + 1
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(rng.integers(100, vocab, n).astype(np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens):
            generator.generate_next_token()
        out.append((first - start, new_tokens / (time.perf_counter() - first)))
        print(f"  {artifact.name} share={share} {n} tokens: first token {out[-1][0]:.2f} s, {out[-1][1]:.1f} tok/s",
              file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--float", dest="floating", default="ort-cpu-int4")
    ap.add_argument("--int8", default="ort-cpu-int4-kv8")
    ap.add_argument("--lengths", default="128,1024,2048")
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    base = args.root / "artifacts" / args.model
    rows = [("float32", True, "on (the builder's)", base / args.floating),
            ("int8", False, "off (the builder's)", base / args.int8),
            ("int8", True, "on (the export's)", base / args.int8)]
    results = [measure(path, share, lengths, args.new_tokens) for _, share, _, path in rows]
    head = " / ".join(f"{n:,}" for n in lengths)
    print(f"| cache | share buffer | decode tok/s at {head} tokens | first token s at {head} | decode, first token "
          "vs float32 at the longest |")
    print("|---|---|---|---|---|")
    for (cache, _, label, _), got in zip(rows, results):
        ratio = (f"{got[-1][1] / results[0][-1][1]:.2f}x, {got[-1][0] / results[0][-1][0]:.2f}x"
                 if cache == "int8" else "-")
        print(f"| {cache} | {label} | {' / '.join(f'{d:.1f}' for _, d in got)} | "
              f"{' / '.join(f'{t:.2f}' for t, _ in got)} | {ratio} |")


if __name__ == "__main__":
    main()
