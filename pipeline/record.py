"""What every stage records beside its outputs: wall time, peak memory, and the versions of the tool chain."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import resource
import sys
import threading
import time
from collections.abc import Iterator

TOOLCHAIN = (
    "torch", "transformers", "optimum", "optimum-intel", "nncf", "openvino", "openvino-tokenizers",
    "openvino-genai", "onnxruntime", "onnxruntime-genai", "huggingface-hub", "dvc",
)


def versions() -> dict[str, str | None]:
    # `system` is what a model card may quote; `platform` (the kernel build string) stays in the metrics.
    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform(),
                                  "system": f"{platform.system()} {platform.machine()}"}
    for name in TOOLCHAIN:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process or any child it waited for (ru_maxrss is KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


@contextlib.contextmanager
def measured(stage: str) -> Iterator[dict]:
    """Yield a dict for the stage to fill; on exit it carries wall seconds, peak RSS and versions."""
    rec: dict = {"stage": stage}
    t0 = time.perf_counter()
    yield rec
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["peak_rss_mb"] = peak_rss_mb()
    rec["versions"] = versions()


class Phases:
    """Where a long job's wall time goes: `with phases("load"):` prints the step as it starts (so a 20-minute export
    shows it is alive) and appends [step, seconds] to `phases.seconds` when it ends (a list: records are written
    with sorted keys, and the order is the point).

    A step still running after `heartbeat_s` says so, again every `heartbeat_s`: NNCF's and the builder's bars draw
    only on a terminal, and a release job's log otherwise showed one line for a whole data-aware compress (13 minutes
    for ov-int4-calib at Phi-3-mini size, hours with GPTQ)."""

    def __init__(self, label: str, heartbeat_s: float = 300.0):
        self.label, self.heartbeat_s, self.seconds = label, heartbeat_s, []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        print(f"{self.label}: {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        done = threading.Event()

        def heartbeat():
            while not done.wait(self.heartbeat_s):
                print(f"{self.label}: {name} still running, {_elapsed(time.perf_counter() - t0)}",
                      file=sys.stderr, flush=True)

        thread = threading.Thread(target=heartbeat, name=f"{self.label}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self.seconds.append([name, round(time.perf_counter() - t0, 2)])


def _elapsed(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def untimed(record):
    """`record` without its timings (`seconds`, `*_s`, `*_seconds`, `phases`) and what says how warm a cache was
    (`*_reused`), at any depth: what is kept with an artifact must come out the same for the same bytes (npu-lib's
    compile_s and reload.load_s made two bit-identical builds' provenance.json differ; the native build's seconds made
    its output a new DVC object on every run; ov-int4-calib's compress_seconds made its release differ between a
    fresh clone and the lock, and statistics_reused would between a machine with NNCF's statistics cached and one
    without)."""
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items()
                if k not in ("seconds", "phases") and not k.endswith(("_s", "_seconds", "_reused"))}
    if isinstance(record, list):
        return [untimed(v) for v in record]
    return record
