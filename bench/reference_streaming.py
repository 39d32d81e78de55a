"""The reference's weights when they do not fit in memory: left to the kernel, or the first kept and the rest handed back.

    python bench/reference_streaming.py [--layers 16] [--layer-mb 256] [--memory-mb 3400] [--passes 4]

Phi-3-medium's 28 GB of BF16 weights do not fit in this machine's 24 GB, so its reference reads some of them from the
checkpoint on every pass (every generated token). Which ones is the question: the kernel evicts the least recently
used pages, and a pass over the layers in order always needs next the pages it used longest ago, so once the weights
exceed memory every page can be read again on every pass. `pipeline/stages/reference.py` keeps the first layers'
pages and hands each later layer's back after it runs (`weights.page_out_tensors`), so a pass reads only what does not
fit. This runs both, side by side, the way the reference does (each layer's BF16 view of the mapped checkpoint copied
into a reused float32 buffer), in a child process each, inside a cgroup (v1 memory controller, root) that holds the
process to --memory-mb, page cache included, so the weights (layers x layer-mb) do not fit. It prints each way's
seconds and bytes read from disk per pass (after a first pass that reads everything either way) and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CGROUP = Path("/sys/fs/cgroup/memory")

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from pipeline.weights import page_out_tensors, read_state_dict

path, layers, keep, passes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
weights = read_state_dict(path.parent)
order = [weights[f"layer.{i}"] for i in range(layers)]
buffer = torch.empty(order[0].shape, dtype=torch.float32)

def read_bytes():
    return next(int(l.split()[1]) for l in open("/proc/self/io") if l.startswith("read_bytes:"))

runs = []
for _ in range(passes + 1):  # the first pass reads everything either way
    t0, r0 = time.perf_counter(), read_bytes()
    for i, w in enumerate(order):
        buffer.copy_(w)
        if keep >= 0 and i >= keep:
            page_out_tensors([w])
    runs.append((time.perf_counter() - t0, read_bytes() - r0))
print(json.dumps(runs[1:]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--layer-mb", type=int, default=256)
    ap.add_argument("--memory-mb", type=int, default=3400)
    ap.add_argument("--passes", type=int, default=4)
    args = ap.parse_args()
    if not (CGROUP / "memory.limit_in_bytes").is_file() or os.geteuid() != 0:
        sys.exit(f"needs root and the cgroup v1 memory controller at {CGROUP}")
    import torch
    from safetensors.torch import save_file

    # What the process holds besides the weights (python, torch, the float32 buffer): measured the way the reference
    # budgets its own memory, so the kept layers are the ones that fit.
    own_mb = 600 + 2 * args.layer_mb
    keep = max(0, (args.memory_mb - own_mb) // args.layer_mb)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp)
        rows = args.layer_mb * 2**20 // (2 * 4096)
        gen = torch.Generator().manual_seed(0)
        save_file({f"layer.{i}": torch.randn(rows, 4096, generator=gen).to(torch.bfloat16)
                   for i in range(args.layers)}, path / "model.safetensors")
        group = CGROUP / f"aipc-bench-{uuid.uuid4().hex[:8]}"
        group.mkdir()
        try:
            (group / "memory.limit_in_bytes").write_text(str(args.memory_mb * 2**20))
            results = {}
            for name, k in (("left to the kernel", -1), (f"first {keep} kept, the rest handed back", keep)):
                # The page cache is charged to the cgroup that first read it: start each way from a cold file.
                subprocess.run([sys.executable, "-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); "
                                "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)", str(path / "model.safetensors")],
                               check=True)
                child = subprocess.run(
                    ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", sys.executable, "-c", CHILD,
                     str(path / "model.safetensors"), str(args.layers), str(k), str(args.passes)],
                    capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if child.returncode:
                    sys.exit(f"{name}: exit {child.returncode}: {child.stderr.strip().splitlines()[-1:]}")
                results[name] = json.loads(child.stdout)
        finally:
            group.rmdir()
    total = args.layers * args.layer_mb
    print(f"{args.layers} layers x {args.layer_mb} MB = {total} MB of BF16 weights, {args.memory_mb} MB of memory "
          f"(cgroup), {args.passes} passes after the first")
    per = {}
    for name, runs in results.items():
        s = sum(t for t, _ in runs) / len(runs)
        mb = sum(b for _, b in runs) / len(runs) / 2**20
        per[name] = (s, mb)
        print(f"  {name:40s} {s:6.2f} s/pass, {mb:7.0f} MB read per pass ({mb / total:.0%} of the weights)")
    (a, amb), (b, bmb) = per.values()
    print(f"  kept + handed back: {a / b:.2f}x faster, {amb / max(bmb, 1):.2f}x fewer bytes read")


if __name__ == "__main__":
    main()
