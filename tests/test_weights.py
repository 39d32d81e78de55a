"""pipeline/weights.py: a checkpoint read as stored is mapped, and page_out hands its pages back without losing data."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_page_out_drops_mapped_pages_and_keeps_every_value(tmp_path):
    """In a process of its own (RSS is per process): a 256 MB shard read as stored, every page touched, then
    page_out; the resident file pages go (the kernel may keep a few), the values read again are the same, and a
    mapping under another directory is left alone. page_out_tensors hands back the pages under the tensors given."""
    code = f"""
import numpy as np, torch
from pathlib import Path
from safetensors.torch import save_file
from pipeline.weights import page_out, page_out_tensors, read_state_dict

def resident_mb(root):  # this process's resident pages of files mapped from under root
    kb, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split()[0] and not line.split()[0].endswith(":"):
            inside = line.split()[-1].startswith(str(root))
        elif inside and line.startswith("Rss:"):
            kb += int(line.split()[1])
    return kb // 1024

src, other = Path({str(tmp_path / "src")!r}), Path({str(tmp_path / "other")!r})
src.mkdir(); other.mkdir()
gen = torch.Generator().manual_seed(0)
save_file({{"w": torch.randn(8192, 16384, generator=gen).to(torch.bfloat16)}}, src / "model.safetensors")
(other / "x").write_bytes(b"\\1" * (64 << 20))
kept = np.memmap(other / "x", dtype=np.uint8, mode="r")
w = read_state_dict(src)["w"]
before = float(w.float().sum()) + float(kept.sum())
touched = resident_mb(src), resident_mb(other)
page_out(src)
after = resident_mb(src), resident_mb(other)
assert float(w.float().sum()) + float(kept.sum()) == before
page_out_tensors([w[:4096]])  # the first half of the tensor's rows: half its pages
half = resident_mb(src), resident_mb(other)
assert float(w.float().sum()) + float(kept.sum()) == before
print(*touched, *after, *half)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    src_touched, other_touched, src_after, other_after, src_half, other_half = map(int, out.stdout.split())
    assert src_touched >= 255 and other_touched == other_after == other_half == 64, out.stdout
    assert src_after <= 16, out.stdout
    assert 120 <= src_half <= 136 + 16, out.stdout  # page_out_tensors: only the pages under the rows it was given
