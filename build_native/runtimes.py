"""Stage `build_native@<target>`: the native runtimes a Windows AI PC needs (onnxruntime + onnxruntime-genai,
DirectML where asked), either as pinned PyPI wheels (wheels.py) or built from pinned source commits (source.py).

Both modes write build-manifest.json: what ran (commands; their durations go to the stage's metrics), with what (versions, commits, toolchain) and
the sha256 of every output. DESIGN.md "Facts: native builds": DirectML builds are Windows-only, and no sources reach
CI, so CI runs `wheel` mode; `source` runs on a developer machine or a release runner.
"""

from __future__ import annotations

import time
from pathlib import Path

from build_native import source, wheels
from build_native.params import NativeParams
from pipeline import fsutil
from pipeline.record import untimed

BUILD_MANIFEST = "build-manifest.json"


def run(native: NativeParams, out: Path) -> dict:
    """Produce `out` (artifacts/native/<target>) atomically and return its build manifest."""
    out = Path(out)
    if native.mode == "source":
        source.preflight(native)  # every refusal happens here, before anything is cloned or built
    start = time.perf_counter()
    with fsutil.staged_dir(out) as tmp:
        record = wheels.fetch(native, tmp) if native.mode == "wheel" else source.build(native, tmp, out.name)
        record["files"] = fsutil.hash_tree(tmp)
        record["seconds"] = round(time.perf_counter() - start, 2)
        # The same bytes for the same build on any machine: timings and the kernel build string stay in the stage's
        # metrics (the returned record). Else each run is a new DVC object and another machine's lock never matches.
        kept = untimed(record)
        kept["host"] = {k: v for k, v in kept.get("host", {}).items() if k != "platform"}
        fsutil.write_json(tmp / BUILD_MANIFEST, kept)
    return record
