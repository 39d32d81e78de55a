"""Publish one multi-GB release through the hub's large-file path and print the time and peak memory it took.

    python bench/publish_large.py [--gb 3] [--dir /tmp]

Not a test (it writes GBs): run by hand. The release is tests/tinyrelease.py's small artifact with its weights file
replaced by a sparse file of --gb GB (created by truncate: no time, no disk until something writes it); `aipc
package` links it into a release and hashes it into the manifest. `pipeline/stages/publish.py` then publishes it
with huggingface_hub's real client to tests/hubserver.py, the loopback hub stand-in, at the hub's own sizes (LFS
from 10 MB; multipart in 64 MiB parts): the client hashes the file (sha256, for the LFS batch API), the stand-in
grants a multipart upload, streams each part to disk, joins them on completion and checks sha256 and size before
the commit may point at it. Client and server run in this one process, so the peak RSS printed is both together.
Everything is deleted afterwards. The client's Xet path (its default with hf_xet installed) is switched off: the
stand-in speaks LFS only.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_DISABLE_XET"] = "1"  # both read when huggingface_hub is imported
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import fsutil  # noqa: E402
from pipeline.stages import package, publish  # noqa: E402
from tests import tinyrelease  # noqa: E402
from tests.hubserver import HubServer  # noqa: E402

TOKEN = "hf_bench_not_a_real_token"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=3.0, help="size of the weights file (GB, 1e9 bytes)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the release and the hub's storage go")
    args = ap.parse_args()
    size = int(args.gb * 1e9)
    root = Path(tempfile.mkdtemp(prefix="publish-large-", dir=args.dir))
    os.environ["HF_TOKEN"] = TOKEN
    try:
        paths = tinyrelease.inputs(root)
        weights = paths["artifact"] / "openvino_model.bin"
        with open(weights, "wb") as f:
            f.truncate(size)
        t0 = time.perf_counter()
        fsutil.write_manifest(paths["artifact"])
        rel = root / "releases/m/ov-int4"
        package.run("m", "ov-int4", tinyrelease.OV_INT4, paths["artifact"], paths["source"], paths["metrics"], rel,
                    thresholds=None)
        packaged = time.perf_counter() - t0
        before = peak_rss_mb()
        with HubServer(token=TOKEN, storage=root / "hub") as hub:
            out = io.StringIO()
            t0 = time.perf_counter()
            publish.publish({"ov-int4": rel}, "acme/big", "v1.0.0", endpoint=hub.endpoint, out=out)
            wall = time.perf_counter() - t0
            (upload,) = [u for u in hub.lfs_uploads if u["size"] == size]
            stored = hub.lfs_object(upload["oid"]).stat().st_size
            files = hub.repos["acme/big-ov-int4"].commits[hub.repos["acme/big-ov-int4"].tags["v1.0.0"]]
        print(out.getvalue().strip())
        print(f"weights: {size / 1e9:.2f} GB sparse; manifest + package (two sha256 passes): {packaged:.1f} s")
        print(f"publish: {wall:.1f} s = {size / wall / 1e6:.0f} MB/s end to end (client sha256 pass, upload, the "
              f"server's sha256 pass and join); {upload['transfer']} in {upload['parts']} parts; "
              f"{len(files)} files committed, the weights as an LFS pointer; stored {stored} bytes, sha256 "
              f"{upload['oid'][:16]}... verified by the server")
        print(f"peak RSS: {before:.0f} MB before publishing, {peak_rss_mb():.0f} MB after (client + server, one "
              f"process); {size / 1e6:.0f} MB went through")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
