"""Peak memory of writing a synthetic checkpoint (pipeline/sources/synthetic.py), against its largest shard.

    python bench/synthetic_write.py [--config phi-3-mini-4k-instruct] [--layers N] [--dest DIR]

Writes the published config (by default shrunk to --layers layers, full width; --layers 0 keeps them all: the real
size, about 7.6 GB for mini and 28 GB for medium, so mind the disk) with seed 0 into DIR (a temp dir by default,
removed after), in a fresh process, and prints the RSS growth over the write against the largest and the total
shard size. Writing must need about one shard, never the whole checkpoint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
from pathlib import Path
import safetensors.torch, torch, transformers  # noqa: F401 (their import is not the write's memory)
from pipeline.sources import synthetic

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

dest, name, overrides = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
synthetic.write_config(dest, name, overrides)
synthetic.expected_shapes(dest)  # the meta model once, before the baseline
base = rss_mb()
written = synthetic.write_weights(dest, name, 0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sizes = [(dest / f).stat().st_size / 2**20 for f in written["shards"]]
print(json.dumps({"growth_mb": peak - base, "largest_mb": max(sizes), "total_mb": sum(sizes), "shards": len(sizes)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="phi-3-mini-4k-instruct")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dest", type=Path)
    args = ap.parse_args()
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
        dest = args.dest or Path(tmp)
        dest.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(dest), args.config, json.dumps(overrides)],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{args.config} ({args.layers or 'all'} layers): {got['shards']} shards, {got['total_mb']:.0f} MB, largest "
          f"{got['largest_mb']:.0f} MB; RSS growth while writing {got['growth_mb']:.0f} MB = "
          f"{got['growth_mb'] / got['largest_mb']:.2f} x the largest shard, "
          f"{got['growth_mb'] / got['total_mb']:.2f} x the checkpoint")


if __name__ == "__main__":
    main()
