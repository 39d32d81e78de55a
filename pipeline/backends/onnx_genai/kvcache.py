"""The int8 KV cache's scales, calibrated for the model builder's kv_cache_scale_file.

onnxruntime's GroupQueryAttention stores key = round(k / scale) per channel (or per layer) and reads k back as
key * scale, so a scale must cover the largest value the cache will ever hold: here the largest absolute key and
value per layer and (kv head, channel) over the calibration conversations, run through the source checkpoint in
PyTorch, divided by 127 (no clipping).

Keys are cached after the rotary embedding, which turns each pair of channels (c, c + rotary/2) by a position-dependent
angle: at a position the calibration never reached, a key can be larger in one channel than any calibrated key was.
The pair's length is what the rotation keeps, so both channels of a rotary pair get the largest length of the pair
over the calibration: no position can exceed it. Channels past the rotary part (partial rotary) and values are not
rotated and get their own largest magnitude.

Each scale is rounded up to a bfloat16 value (8 significant bits): the largest activation is a float32 sum whose last
bits depend on the CPU's kernels, and the rounding leaves the scale the same unless that sum sits within those bits of
a bfloat16 step (the scales are still declared machine dependent: onnx_genai.machine_dependent).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import calibset
from pipeline.backends.common import source_ids, source_tokenizer
from pipeline.backends.onnx_genai import KV_SCALES
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.weights import checkpoint_dtype, load_causal_lm

QMAX = 127


def calibrate(source: Path, variant: OnnxGenaiVariant, out: Path) -> dict:
    """Write the scales of `variant`'s KV cache to `out` (the builder's kv_cache_scale_file format) and return the
    record of how they were found."""
    import torch

    start = time.perf_counter()
    tokenizer = source_tokenizer(Path(source))
    samples = [source_ids(source, tokenizer.apply_chat_template(c, tokenize=False))[: variant.seq_len]
               for c in calibset.load(variant.calibration)[: variant.num_samples]]
    # As stored (bf16 at real size, float32 for the embedded default): a float32 copy of Phi-3-mini is 15 GB.
    model, _info = load_causal_lm(Path(source), None, label="kv cache calibration")
    model.eval()
    config = model.config
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rotary = int(head * getattr(config, "partial_rotary_factor", 1.0))
    keys = values = None
    with torch.inference_mode():
        for i, ids in enumerate(samples, 1):
            cache = model(torch.tensor([ids]), use_cache=True).past_key_values
            k = torch.stack([layer.keys[0] for layer in cache.layers]).float()  # [layers, kv heads, tokens, head]
            v = torch.stack([layer.values[0] for layer in cache.layers]).float()
            pair = torch.hypot(k[..., : rotary // 2], k[..., rotary // 2: rotary])
            k = torch.cat([pair, pair, k[..., rotary:].abs()], dim=-1).amax(dim=2)
            v = v.abs().amax(dim=2)
            keys = k if keys is None else torch.maximum(keys, k)
            values = v if values is None else torch.maximum(values, v)
            if i % 8 == 0 or i == len(samples):
                print(f"kv cache calibration: {i}/{len(samples)} conversations", file=sys.stderr, flush=True)
    del model
    keys, values = keys.flatten(1).numpy(), values.flatten(1).numpy()  # [layers, kv heads x head]
    if variant.kv_cache_quant_scheme.endswith("per_tensor"):
        keys, values = keys.max(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
    scales = {"k_scales": _scales(keys), "v_scales": _scales(values)}
    Path(out).write_text(json.dumps({"scales": {k: v.tolist() for k, v in scales.items()}}))
    return {
        "set": variant.calibration, "samples": len(samples), "tokens": sum(map(len, samples)),
        "dtype": checkpoint_dtype(source), "rotary_channels": rotary,
        "key_scales": [float(scales["k_scales"].min()), float(scales["k_scales"].max())],
        "value_scales": [float(scales["v_scales"].min()), float(scales["v_scales"].max())],
        "seconds": round(time.perf_counter() - start, 2),
    }


def _scales(absmax: np.ndarray) -> np.ndarray:
    """absmax / QMAX rounded up to a bfloat16 value (never below it: nothing clips); a channel that stayed 0 gets the
    smallest positive scale the builder accepts."""
    scale = np.maximum(absmax.astype(np.float32) / QMAX, np.float32(1e-8))
    bits = scale.view(np.uint32)
    return ((bits + np.uint32(0xFFFF)) & np.uint32(0xFFFF0000)).view(np.float32)
