"""A checkpoint's tensors, held the cheapest way for what the caller needs.

transformers (and safetensors' own loader) map every shard and touch all of it while converting dtypes, so a
Phi-3-mini load peaks at the converted model plus the whole 7.6 GB checkpoint in mapped pages (measured: optimum's
FP16 export at 15.4 GB, 2.0x the weights). Here:
- converted to another dtype, a tensor is read with a plain file read: its bytes pass through the page cache, which
  is not the process's memory, and only the converted copy stays (the peak is the model plus one tensor);
- as stored, a tensor is a copy-on-write view of the mapped shard: resident only while touched, and clean pages
  the kernel can drop under pressure, so a checkpoint larger than RAM still loads (Phi-3-medium: 28 GB).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import mmap
import os
import struct
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
MADV_PAGEOUT = 21  # Linux 5.4+


def checkpoint_dtype(source: Path) -> str:
    """The dtype the checkpoint's config declares (`dtype`, or the older `torch_dtype`); float32 if it says none."""
    config = json.loads((Path(source) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")


def read_state_dict(source: Path, dtype: torch.dtype | None = None, *, label: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of `source`'s *.safetensors, converted to `dtype` (None: as stored)."""
    import torch

    shards = sorted(Path(source).glob("*.safetensors"))
    if not shards:
        raise PipelineError(f"{source}: no *.safetensors weights")
    import numpy as np

    tensors: dict[str, torch.Tensor] = {}
    for i, shard in enumerate(shards, 1):
        if label:
            print(f"{label}: reading {shard.name} ({i}/{len(shards)})", file=sys.stderr, flush=True)
        with open(shard, "rb", buffering=0) as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            mapped = np.memmap(shard, dtype=np.uint8, mode="c", offset=8 + size)  # copy-on-write: never the file
            for name, meta in header.items():
                stored = SAFETENSORS_DTYPES.get(meta["dtype"])
                if stored is None:
                    raise PipelineError(f"{shard}: {name} is {meta['dtype']}; only BF16, F16 and F32 are read")
                start, end = meta["data_offsets"]
                if end > len(mapped):
                    raise PipelineError(f"{shard}: truncated in {name}")
                if dtype is None or getattr(torch, stored) == dtype:
                    raw = torch.from_numpy(mapped[start:end])
                else:
                    raw = torch.empty(end - start, dtype=torch.uint8)
                    f.seek(8 + size + start)
                    f.readinto(memoryview(raw.numpy()))
                tensor = raw.view(getattr(torch, stored)).reshape(meta["shape"])
                tensors[name] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
    return tensors


@functools.cache
def _madvise():
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise


def page_out(root: Path) -> None:
    """Hand the kernel back this process's resident pages of every file mapped from under `root` (MADV_PAGEOUT), for
    a caller that has read those weights and will not read them again soon. Peak RSS counts mapped pages, and a
    library that maps a checkpoint or an IR keeps every page it touched. Unwritten pages are the file's and come back
    from it when touched again; a copy-on-write page written since has no swap to go to here and stays: nothing is
    lost either way. Where the kernel does not know the advice (before Linux 5.4), nothing happens."""
    root = f"{os.path.realpath(root)}{os.sep}"
    madvise = _madvise()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n").startswith(root):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                madvise(start, end - start, MADV_PAGEOUT)


def page_out_tensors(tensors) -> None:
    """page_out for the pages under these tensors (views of a mapped shard), for a caller that streams a model
    larger than memory a layer at a time. Pages at either end shared with a neighbouring tensor go too: they come
    back from the file when touched. A tensor in the process's own memory is left as it is (no swap here)."""
    madvise = _madvise()
    for t in tensors:
        start = t.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
        madvise(start, t.data_ptr() + t.numel() * t.element_size() - start, MADV_PAGEOUT)


@contextlib.contextmanager
def paging_out(root: Path, every_s: float = 2.0):
    """page_out(root) every `every_s` seconds while the block runs (a library call that reads a whole mapped model,
    NNCF's compress_weights, with no point to call it between weights)."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every_s):
            page_out(root)

    thread = threading.Thread(target=loop, name="page-out", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def load_causal_lm(source: Path, dtype: torch.dtype | None = None, *, label: str = ""):
    """The checkpoint's model class loaded from `read_state_dict`, and transformers' loading info.

    transformers takes a state dict in place of a path only without one, so the config (and generation config) are
    read here; the class is the config's architecture (the fetch check allows Phi3ForCausalLM only)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(source)
    cls = getattr(transformers, config.architectures[0])
    state = read_state_dict(source, dtype, label=label)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, info = cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True, **kwargs)
    del state
    try:
        model.generation_config = transformers.GenerationConfig.from_pretrained(source)
    except OSError:
        pass  # none in the checkpoint: the one transformers derived from the config stays, as a path load does
    return model, info
