"""The `native:` section of params.yaml, one entry per target (stage build_native@<target>)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.schema import Strict

# execution provider -> (onnxruntime package, onnxruntime-genai package) on PyPI
PACKAGES = {
    "cpu": ("onnxruntime", "onnxruntime-genai"),
    "dml": ("onnxruntime-directml", "onnxruntime-genai-directml"),
    "cuda": ("onnxruntime-gpu", "onnxruntime-genai-cuda"),
}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class GitSource(Strict):
    """One pinned repository. `url` is cloned into work_dir/src/<name>; `path` is either a local checkout, used in
    place (it must sit at `commit` with no uncommitted changes), or a bare git dir, cloned from."""

    commit: str
    url: str | None = None
    path: Path | None = None
    # FetchContent name -> local source dir of a dependency (offline builds). Any entry also sets
    # FETCHCONTENT_FULLY_DISCONNECTED=ON, so a dependency left out fails instead of being downloaded silently.
    deps: dict[str, Path] = {}

    @field_validator("commit")
    @classmethod
    def _pinned(cls, v: str) -> str:
        if not _COMMIT.match(v):
            raise ValueError(f"commit {v!r} is not a 40-hex commit sha")
        return v

    @model_validator(mode="after")
    def _one_origin(self) -> GitSource:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of `url` (git URL) or `path` (local checkout or git dir)")
        return self


class SourceParams(Strict):
    onnxruntime_genai: GitSource
    # Where genai's ORT_HOME comes from:
    #   build     build onnxruntime from `onnxruntime` (hours on 2 cores),
    #   headers   headers from the `onnxruntime` checkout + the library of the onnxruntime wheel installed here
    #             (Linux/macOS: genai dlopens it at run time; Windows would need onnxruntime.lib, which no wheel has),
    #   prebuilt  `ort_home` already holds include/ and lib/ (e.g. an onnxruntime release archive).
    onnxruntime_from: Literal["build", "headers", "prebuilt"] = "build"
    onnxruntime: GitSource | None = None
    ort_home: Path | None = None

    @model_validator(mode="after")
    def _ort(self) -> SourceParams:
        if self.onnxruntime_from == "prebuilt" and self.ort_home is None:
            raise ValueError("onnxruntime_from: prebuilt needs `ort_home` (a dir with include/ and lib/)")
        if self.onnxruntime_from != "prebuilt" and self.onnxruntime is None:
            raise ValueError(f"onnxruntime_from: {self.onnxruntime_from} needs `onnxruntime` (commit + url or path)")
        return self


class WheelParams(Strict):
    onnxruntime: str  # version of the provider's onnxruntime package (PACKAGES)
    onnxruntime_genai: str
    sha256: dict[str, str] = {}  # package name -> expected sha256 of its wheel
    platform: str | None = None  # pip --platform; default win_amd64 for dml, else this machine
    python_version: str | None = None  # pip --python-version, e.g. "311"; default this interpreter

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            if not _SHA256.match(digest):
                raise ValueError(f"sha256 of {name} must be 64 lower-case hex digits")
        return v


class NativeParams(Strict):
    mode: Literal["wheel", "source"] = "wheel"
    execution_provider: Literal["dml", "cpu", "cuda"]
    wheel: WheelParams | None = None
    source: SourceParams | None = None
    jobs: Annotated[int, Field(ge=1)] = 2
    ccache_dir: Path | None = None  # default: ccache's own; ignored when ccache is not installed
    work_dir: Path = Path("build_native/out")  # clones and build trees (kept between runs: incremental builds)

    @model_validator(mode="after")
    def _section(self) -> NativeParams:
        section = getattr(self, self.mode)
        if section is None:
            raise ValueError(f"mode: {self.mode} needs a `{self.mode}:` section")
        if self.wheel:
            valid = PACKAGES[self.execution_provider]
            for name in self.wheel.sha256:
                if name not in valid:
                    raise ValueError(f"wheel.sha256: {name!r} is not a {self.execution_provider} package "
                                     f"(valid: {', '.join(valid)})")
        return self
