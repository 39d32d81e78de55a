"""The reference stage's bf16 -> float32 upcast per layer: into buffers reused by shape (the stage's) against a fresh
float32 tensor per layer per call (its earlier form), side by side on one model, alternating, greedy decode.

    python bench/reference_upcast.py [CHECKPOINT] [--tokens 16] [--rounds 3]

CHECKPOINT: a bf16 Phi-3 checkpoint (e.g. a synthetic full-size one from bench/real_size.py --keep). Without it, a
random bf16 Phi-3 with Phi-3-mini's layer shapes (hidden 3072, MLP 8192, vocab 32064) and 4 layers is written to a
scratch dir. Prints seconds per token of each, their ratio, and checks both generate the same ids.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.stages import reference  # noqa: E402
from pipeline.weights import load_causal_lm  # noqa: E402


def fresh_upcast(model) -> None:
    """The earlier form: a new float32 tensor per parameter each time its module runs."""

    def up(module, _args):
        module._aipc_stored = [(p, p.data) for p in module.parameters(recurse=False)]
        for p, data in module._aipc_stored:
            p.data = data.float()

    def down(module, _args, _out):
        for p, data in module._aipc_stored:
            p.data = data
        del module._aipc_stored

    reference.hook_own_parameters(model, up, down)


def scratch_checkpoint(out: Path) -> Path:
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                        tie_word_embeddings=False, pad_token_id=32000, bos_token_id=1, eos_token_id=32000)
    torch.manual_seed(0)
    Phi3ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    return out


def decode(model, tokens: int) -> tuple[float, list[int]]:
    ids = torch.tensor([[1, 450, 7483, 310, 3444, 338]])
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=tokens,
                             min_new_tokens=tokens, pad_token_id=0)
        seconds = time.perf_counter() - start
    return seconds / tokens, out[0].tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?", type=Path)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aipc-upcast-") as tmp:
        source = args.checkpoint or scratch_checkpoint(Path(tmp) / "ckpt")
        models = {}
        for name, hook in (("reused buffers", reference._upcast_when_used), ("fresh tensors", fresh_upcast)):
            model, _ = load_causal_lm(source, None, label="bench")
            hook(model.eval())
            models[name] = model
        times: dict[str, list[float]] = {name: [] for name in models}
        ids = {}
        for r in range(args.rounds):
            for name, model in models.items():
                per_token, ids[name] = decode(model, args.tokens)
                times[name].append(per_token)
                print(f"round {r + 1} {name}: {per_token:.3f} s/token", flush=True)
    same = len(set(map(tuple, ids.values()))) == 1
    med = {name: statistics.median(t) for name, t in times.items()}
    print("median s/token: " + ", ".join(f"{n} {v:.3f}" for n, v in med.items()))
    print(f"fresh / reused: {med['fresh tensors'] / med['reused buffers']:.2f}x; same ids: {same}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if not same:
        sys.exit("the two forms generated different ids")


if __name__ == "__main__":
    main()
