"""`aipc matrix`: the CI job matrix, from params.yaml and dvc.yaml. Not a DVC stage: DVC is no executor (one machine,
no parallel stages), so the fan-out is the CI system's job matrix and the shared state is the DVC remote and its run
cache (.github/workflows/release.yml consumes this; bench/matrix_local.py runs the same jobs as local processes).

Jobs, in the order they run (each level needs every job of the one before; GitHub Actions cannot do finer):
  upstream  one per model: fetch@m, ir@m, reference@m (what every backend of m reads); and `native`: runner_wheel
            and build_native@* (model-independent)
  build     one per (model x backend group): <backend>-{export,smoke,quality}@m-v for each configured variant v of
            that backend (openvino's also runs runner@m, which reads the FP16 IR and the runner wheel)
  windows   one per model with DirectML variants when a `dml` native target is configured: the DirectML runtime built
            from source there, then <backend>-smoke@m-v of those variants through it on the runner's GPU (taken out of
            the Linux build job, so the smoke.json the packages' cards quote is DirectML's; without a `dml` target
            they stay in the build job and record their CPU fallback)
  assemble  report and every <backend>-package@m-v; pulls the rest, which must all be up to date

Every job runs `check` (always_changed by design, cheap) and restores what earlier jobs pushed from the remote's run
cache. The split is checked against DVC's own graph: a stage reading an output of a job that is not earlier (or its
own) is an error, as is a dvc.yaml stage no job owns.

Sizes: each stage's peak RSS and wall time come from its metrics JSON (`peak_rss_mb`, `wall_s`, written by every
stage) and its output bytes from dvc.lock, where recorded; otherwise they are estimated from the model's FP16 bytes
(parameter count from its config) with the ratios measured at full Phi-3-mini size (ESTIMATE, shared DESIGN.md). A job
goes to the first runner that holds it (RAM: its largest stage; disk: the environment, its inputs pulled and its
outputs); the reference and the FP16 IR can run below their peak, slower (ELASTIC), and are placed so where no
runner holds their peak; a build job too big for any runner is split into one job per variant, and a stage too big
for every runner is refused, naming the stage, what it needs and what the largest runner holds.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import dvcfiles
from pipeline.errors import PipelineError
from pipeline.layout import MODELS, STAGES
from pipeline.params import Params, configured, validate

GB = 1e9
# Hosted runners (GitHub's documentation): 16 GB RAM; about 14 GB of free disk. `--runner NAME=RAM,DISK` adds one.
# Windows jobs go to runners whose name has "windows" in it, the others to the rest.
RUNNERS = {"ubuntu-latest": (16.0, 14.0), "windows-latest": (16.0, 14.0)}
# `make setup` on this project's machines (du -s): .venv 2.2 GB + .venv-npu 2.0 GB, before any data.
SETUP_GB = 4.2

# stage kind -> (peak RSS, wall seconds per GB, output bytes), each x the model's FP16 bytes (peak None: by family,
# FAMILY_RSS). Measured at full Phi-3-mini size (7.64 GB), one stage at a time (README, "At real size"): fetch, ir,
# the exports (peaks: the largest of each backend's variants, ir 1.21, ov-int4 0.48, ort-dml-fp16 1.13, npu-lib-int8
# 0.73), the reference (bf16 as stored, upcast per layer: 12.9 GB, 1.69x, in 543 s on Phi-3-mini-4k). GUESSES (no
# full-size run yet): runner, package, report. Output bytes scale with the variant's precision family (PRECISION).
ESTIMATE = {
    "fetch": (0.01, 4.2, 1.0), "ir": (1.21, 9.2, 1.0), "reference": (1.69, 105.8, 0.01),
    "openvino-export": (0.48, 11.3, None), "onnx_genai-export": (1.13, 13.1, None),
    "npu_library-export": (0.73, 15.8, None),
    # smoke and quality: each backend's slowest variant, Phi-3-mini-128k through every route (ov-int4-npu's second
    # pipeline, ort-dml-fp16 on the CPU EP, npu-lib-int4 on the library's CPU kernels); peaks: FAMILY_RSS
    "openvino-smoke": (None, 37.8, 0.0), "onnx_genai-smoke": (None, 11.4, 0.0),
    "npu_library-smoke": (None, 54.1, 0.0),
    "openvino-quality": (None, 39.9, 0.0), "onnx_genai-quality": (None, 53.7, 0.0),
    "npu_library-quality": (None, 139.0, 0.0),
    # GUESSES (no full-size run yet): the OpenVINO EP's wrap hard-links the IR and writes two small files; its smoke
    # and quality run the same IR on the same OpenVINO as openvino's
    "openvino_ep-export": (0.01, 0.1, None), "openvino_ep-smoke": (None, 37.8, 0.0),
    "openvino_ep-quality": (None, 39.9, 0.0),
    "runner": (1.0, 5.0, 0.0), "package": (0.0, 0.5, 0.0), "report": (0.0, 0.0, 0.0),
    "runner_wheel": (0.0, 0.0, 0.0), "build_native": (0.0, 0.0, 0.0),
    # data-aware OpenVINO exports at Phi-3-mini-4k size (README, "At real size"): AWQ + scale estimation 769 s,
    # 9.6 GB; GPTQ 5810 s (half of it beside the test suite), 12.3 GB
    "openvino-export+calibrated": (1.26, 100.7, None), "openvino-export+gptq": (1.61, 760.5, None),
}
# Smoke and quality peaks by precision family, (GB, x the FP16 bytes): they do not scale with the model as one ratio.
# FP16 compiles float32 weights beside the mapped IR on the CPU (Phi-3-mini: smoke 15.3 GB, 2.0x; quality 21.0 GB,
# 2.74x). INT4 through the sizes measured (README, "At real size"; ort-cpu-int4 below ov-int4 in each): smoke 6.1 GB
# at Phi-3-mini, 20.7 at Phi-3-medium; quality 15.4 and 20.9 (the 4k models; Phi-3.5-mini's 11.8). INT8, measured at
# Phi-3-mini-128k/3.5-mini shapes only (npu-lib-int8): smoke 6.1 GB as INT4's, quality 11.4 GB under INT4's 11.8
# there: INT4's lines.
FAMILY_RSS = {
    "smoke": {"fp32": (0.0, 3.0), "fp16": (0.0, 2.03), "int8": (0.6, 0.72), "int4": (0.6, 0.72)},
    "quality": {"fp32": (0.0, 3.0), "fp16": (0.0, 2.74), "int8": (13.3, 0.27), "int4": (13.3, 0.27)},
}
# Stages that run below the peak above where memory is short, and what that costs: kind -> (GB they need besides
# the weights they keep, that need x the FP16 bytes, seconds per GB of weights that do not fit). The reference keeps
# what fits of a 16-bit checkpoint's weights and reads the rest from it again on every pass (stages/reference.py):
# its own 4 GiB and the float32 copies (0.11x at mini size); Phi-3-medium in 24 GiB kept 16.5 GB of its 27.9 and took
# 3812 s against the 2954 s of one whose weights fit: 72 s per GB streamed. The FP16 IR's own memory is about 1 GB at
# any size, the rest of its peak clean checkpoint pages: Phi-3-medium's (28 GB) ran in 24 GiB, in the time its size
# predicts from mini's (below that, not measured).
ELASTIC = {"reference": (4.3, 0.11, 72.0), "ir": (2.0, 0.0, 0.0)}
LESS = {"reference": "reading its weights from disk on every pass", "ir": "without its checkpoint pages resident"}
SYSTEM_GB = 2.0  # a runner's OS and the job's tools (medium's reference kept 16.5 GB of 25.8; this predicts 16.4)
SIXTEEN_BIT = ("bfloat16", "float16")
PRECISION = {"fp32": 2.0, "fp16": 1.0, "int8": 0.55, "int4": 0.35}
FLOOR_RSS_GB, FLOOR_S = 1.0, 20.0  # python + torch imports: no stage costs less (measured: 0.1-2 GB, 5-20 s)


@dataclass
class Stage:
    name: str
    model: str | None
    kind: str
    rss_gb: float = 0.0
    wall_s: float = 0.0
    out_gb: float = 0.0
    estimated: bool = False
    producers: set[str] = field(default_factory=set)
    weights_gb: float = 0.0  # a 16-bit model's FP16 bytes, for the ELASTIC kinds

    def on(self, ram: float) -> tuple[float, float] | None:
        """(peak RSS, wall seconds) on a runner with `ram` GB, below the peak if the stage can be; None: no room."""
        if self.rss_gb <= ram:
            return self.rss_gb, self.wall_s
        if self.kind not in ELASTIC or not self.weights_gb:
            return None
        keep = ram - self.floor_gb()  # the weights it can hold; the rest is read again on every pass
        if keep < 0:
            return None
        return ram - SYSTEM_GB, self.wall_s + ELASTIC[self.kind][2] * max(0.0, self.weights_gb - keep)

    def floor_gb(self) -> float:
        fixed, per_gb, _ = ELASTIC[self.kind]
        return SYSTEM_GB + fixed + per_gb * self.weights_gb


@dataclass
class Job:
    name: str
    level: str  # one of LEVELS
    stages: list[str]
    extra: dict = field(default_factory=dict)  # more matrix fields (the Windows job's model and native target)
    runs_on: str = "ubuntu-latest"
    rss_gb: float = 0.0
    disk_gb: float = 0.0
    wall_s: float = 0.0
    pull_gb: float = 0.0
    push_gb: float = 0.0
    below_peak: list[str] = field(default_factory=list)  # stages that run in less than their peak on its runner


LEVELS = ("upstream", "build", "windows", "assemble")


def _ownership(params: Params) -> tuple[list[Job], dict[str, tuple[str, str | None]]]:
    """Who builds what, from the configured (model, backend, variant) triples; and each stage's (model, family)."""
    jobs = {f"upstream@{m}": Job(f"upstream@{m}", "upstream", [f"fetch@{m}", f"ir@{m}", f"reference@{m}"])
            for m in params.models}
    jobs["native"] = Job("native", "upstream", ["runner_wheel", *(f"build_native@{t}" for t in params.native)])
    assemble = Job("assemble", "assemble", ["report"])
    model_of: dict[str, tuple[str, str | None]] = {}
    dml_native = next((t for t, n in params.native.items() if n.execution_provider == "dml"), None)
    for model, backend, variant in configured(params):
        # A variant that wraps another's artifact (the OpenVINO EP's) builds in that variant's backend job, which
        # makes what it reads: jobs of one level cannot wait for each other.
        home = next((params.variants[w].backend for w in params.wrapped(variant)), backend)
        job = jobs.setdefault(f"{home}@{model}", Job(f"{home}@{model}", "build", []))
        names = [f"{backend}-{kind}@{model}-{variant}" for kind in ("export", "smoke", "quality", "package")]
        job.stages += [names[0], names[2]]
        # DirectML is decided by the ONNX Runtime variant's execution provider (the only backend that has one)
        if dml_native and getattr(params.variants[variant], "execution_provider", None) == "dml":
            jobs.setdefault(f"dml@{model}", Job(f"dml@{model}", "windows", [], extra={
                "model": model, "native": dml_native})).stages.append(names[1])
        else:
            job.stages.insert(-1, names[1])
        assemble.stages.append(names[3])
        model_of.update((n, (model, params.variants[variant].family)) for n in names)
    for model in params.models:  # the runner decodes the FP16 IR: it goes with the model's OpenVINO job
        jobs.setdefault(f"openvino@{model}", Job(f"openvino@{model}", "build", [])).stages.append(f"runner@{model}")
        model_of.update((f"{kind}@{model}", (model, None)) for kind in ("fetch", "ir", "reference", "runner"))
    return [*jobs.values(), assemble], model_of


def _graph(root: Path) -> dict[str, tuple[list[str], list[tuple[str, bool]]]]:
    """DVC's own view of dvc.yaml and every models/<model>/dvc.yaml: stage -> (dep paths, [(out path, cached)])."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: ([d.def_path for d in s.deps], [(o.def_path, o.use_cache) for o in s.outs])
                for s in repo.index.stages}


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def fp16_bytes(config: dict) -> float:
    """A Phi-3 config's parameter count x 2 bytes."""
    h, layers, inter, vocab = (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
                               config["vocab_size"])
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    qkv = h * (heads + 2 * kv) * (h // heads)
    per_layer = qkv + h * h + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return 2.0 * (layers * per_layer + embeddings + h)


def _config(root: Path, model: str, spec) -> dict | None:
    """The model's config.json without fetching it: the fetched one, the published one (synthetic, or a hub id we
    ship the config of), or a local checkpoint's."""
    configs = Path(__file__).resolve().parents[1] / "sources" / "configs"
    candidates = [root / "artifacts" / model / "source" / "config.json"]
    if spec.source == "synthetic":
        candidates.append(configs / f"{spec.id}.json")
    elif spec.source == "hub":
        candidates.append(configs / f"{spec.id.split('/')[-1].lower()}.json")
    elif spec.source == "local":
        candidates.append(Path(spec.id) / "config.json")
    return next((json.loads(p.read_text()) for p in candidates if p.is_file()), None)


def _measure(params: Params, root: Path, graph: dict, model_of: dict) -> dict[str, Stage]:
    lock = {}
    for path in [root / "dvc.lock", *sorted((root / MODELS).glob("*/dvc.lock"))]:  # stage names are unique across them
        if path.is_file():
            lock.update((yaml.safe_load(path.read_text()) or {}).get("stages", {}))
    producer = {path: name for name, (_, outs) in graph.items() for path, _ in outs if name != "check"}
    configs: dict[str, dict | None] = {}

    def config(model: str) -> dict | None:
        if model not in configs:
            configs[model] = _config(root, model, params.models[model])
        return configs[model]

    stages: dict[str, Stage] = {}
    for name, (deps, outs) in graph.items():
        if name == "check":
            continue
        kind = name.split("@")[0]
        model, family = model_of.get(name, (None, None))
        st = Stage(name, model, kind)
        st.producers = {p for o, p in producer.items() if p != name and any(_inside(o, d) or _inside(d, o)
                                                                              for d in deps)}
        cfg = config(model) if model is not None else None
        size = fp16_bytes(cfg) / GB if cfg else 0.0
        if kind in ELASTIC and cfg and cfg.get("torch_dtype") in SIXTEEN_BIT:
            st.weights_gb = size
        metrics = [p for p, cached in outs if not cached and p.startswith("metrics/") and p.endswith(".json")]
        recorded = lock.get(name, {}).get("outs")
        measured = json.loads((root / metrics[0]).read_text()) if metrics and (root / metrics[0]).is_file() else {}
        # releases are hard links to artifacts already in the cache and the remote: no new bytes but the card
        data = [o for o in recorded or [] if o["path"].startswith("artifacts/")]
        if recorded is not None:  # ran here: what dvc.lock and its metrics say (the floor where they say nothing)
            st.out_gb = sum(o.get("size", 0) for o in data) / GB
            st.rss_gb = measured.get("peak_rss_mb", FLOOR_RSS_GB * 1e3) / 1e3
            st.wall_s = measured.get("wall_s", 0.0)
        else:
            st.estimated = True
            step = kind.rsplit("-", 1)[-1]
            rss, s_per_gb, out = ESTIMATE.get(_cost_kind(params, name, kind, model)) or ESTIMATE[step]
            if model is not None and cfg is None and (rss or out):
                raise PipelineError(f"matrix: cannot size {name}: nothing measured (metrics/, dvc.lock) and no "
                                    f"config.json to estimate model {model!r} from; fetch it or run it once")
            out = PRECISION.get(family or "fp16", 1.0) if out is None else out
            if step in FAMILY_RSS and family:
                fixed, ratio = FAMILY_RSS[step][family]
                st.rss_gb = fixed + ratio * size
            else:
                st.rss_gb = max(FLOOR_RSS_GB, rss * size) if rss else 0.0
            st.wall_s = max(FLOOR_S, s_per_gb * size) if s_per_gb else 0.0
            st.out_gb = out * size
        stages[name] = st
    return stages


def _cost_kind(params: Params, name: str, kind: str, model: str | None) -> str:
    """`kind`, or for an OpenVINO export that calibrates, the ESTIMATE key of its much slower data-aware pass."""
    if kind != "openvino-export" or model is None:
        return kind
    variant = params.variants[name.split("@", 1)[1].removeprefix(f"{model}-")]
    if getattr(variant, "calibration", None) is None:
        return kind
    return f"{kind}+gptq" if getattr(variant, "gptq", False) else f"{kind}+calibrated"


def _fit(job: Job, stages: dict[str, Stage], runners: dict[str, tuple[float, float]]) -> None:
    own = set(job.stages)
    pulled = {p for s in job.stages for p in stages[s].producers if p not in own}
    job.rss_gb = max((stages[s].rss_gb for s in job.stages), default=0.0)
    job.push_gb = sum(stages[s].out_gb for s in job.stages)
    job.pull_gb = sum(stages[p].out_gb for p in pulled)
    job.disk_gb = SETUP_GB + job.push_gb + job.pull_gb
    job.wall_s = sum(stages[s].wall_s for s in job.stages)
    for name, (ram, disk) in _pool(runners, job).items():
        on = [stages[s].on(ram) for s in job.stages]
        if None in on or job.disk_gb > disk:
            continue
        job.runs_on = name
        job.rss_gb = max((rss for rss, _ in on), default=0.0)
        job.wall_s = sum(wall for _, wall in on)
        job.below_peak = [s for s in job.stages if stages[s].rss_gb > ram]
        return
    job.runs_on = ""


def _pool(runners: dict[str, tuple[float, float]], job: Job) -> dict[str, tuple[float, float]]:
    return {n: size for n, size in runners.items() if ("windows" in n) == (job.level == "windows")}


def _refuse(job: Job, stages: dict[str, Stage], runners: dict[str, tuple[float, float]]) -> PipelineError:
    pool = _pool(runners, job)
    if not pool:
        return PipelineError(f"matrix: job {job.name} needs a {'Windows' if job.level == 'windows' else 'Linux'} "
                             "runner and --runner named none")
    name, (ram, disk) = max(pool.items(), key=lambda r: r[1])
    hint = "--runner windows-NAME=RAM_GB,DISK_GB" if job.level == "windows" else "--runner NAME=RAM_GB,DISK_GB"
    short = [s for s in job.stages if stages[s].on(ram) is None]
    if short:
        big = max(short, key=lambda s: stages[s].rss_gb)
        st = stages[big]
        how = "estimated" if st.estimated else "measured"
        less = (f", or {st.floor_gb():.1f} GB {LESS[st.kind]}" if st.kind in ELASTIC and st.weights_gb else "")
        return PipelineError(f"matrix: {big} needs {st.rss_gb:.1f} GB of RAM ({how}{less}) but the largest "
                             f"runner, {name}, holds {ram:g} GB; add a bigger one with {hint}")
    return PipelineError(f"matrix: job {job.name} needs {job.disk_gb:.1f} GB of disk (environment {SETUP_GB} + pulled "
                         f"{job.pull_gb:.1f} + built {job.push_gb:.1f}) but the largest runner, {name}, has {disk:g} "
                         f"GB; add a bigger one with {hint}")


def _split(job: Job, model_of: dict) -> list[Job]:
    """A job too big for any runner, in smaller ones: a build (or Windows) job per variant; the assembly per model
    (its packages) and the report alone."""
    if job.level in ("build", "windows"):
        keys = {s: s.split("@", 1)[1] for s in job.stages}
        return [Job(f"{job.name}:{key.removeprefix(job.name.split('@', 1)[1] + '-')}", job.level,
                    [s for s in job.stages if keys[s] == key], extra=job.extra) for key in dict.fromkeys(keys.values())]
    if job.level == "assemble" and len(job.stages) > 1:
        models = dict.fromkeys(model_of[s][0] for s in job.stages if s in model_of)
        return [Job("assemble", "assemble", [s for s in job.stages if s not in model_of])] + [
            Job(f"assemble@{m}", "assemble", [s for s in job.stages if model_of.get(s, (None,))[0] == m])
            for m in models]
    return [job]


def plan(params: Params, root: Path, runners: dict[str, tuple[float, float]] | None = None,
         strict: bool = True) -> dict:
    """The job matrix. strict=False (--scale) lists the jobs no runner holds under `refused` instead of failing."""
    runners = dict(sorted((runners or RUNNERS).items(), key=lambda r: r[1]))
    jobs, model_of = _ownership(params)
    graph = _graph(root)
    owner = {s: j for j in jobs for s in j.stages}
    missing = [s for s in owner if s not in graph]
    if missing:
        raise PipelineError(f"matrix: params.yaml configures {missing[0]} but dvc.yaml has no such stage "
                            f"({len(missing)} missing)")
    unowned = [s for s in graph if s not in owner and s != "check"]
    if unowned:
        raise PipelineError(f"matrix: dvc.yaml stage {unowned[0]} is in no job ({len(unowned)} unowned)")
    stages = _measure(params, root, graph, model_of)
    for name, st in stages.items():
        for p in st.producers:
            if LEVELS.index(owner[p].level) > LEVELS.index(owner[name].level) or (
                    owner[p].level == owner[name].level and owner[p] is not owner[name]):
                raise PipelineError(f"matrix: {name} (job {owner[name].name}) reads an output of {p} (job "
                                    f"{owner[p].name}), which does not run before it")
    fitted: list[Job] = []
    refused: list[str] = []
    for job in jobs:
        _fit(job, stages, runners)
        parts = [job] if job.runs_on else _split(job, model_of)
        for part in parts:
            if part is not job:
                _fit(part, stages, runners)
            if not part.runs_on:
                error = _refuse(part, stages, runners)
                if strict:
                    raise error
                refused.append(str(error))
        fitted += parts
    return _render(params, fitted, stages, refused)


def _render(params: Params, jobs: list[Job], stages: dict[str, Stage], refused: list[str]) -> dict:
    def targets(names: list[str]) -> str:  # what `dvc repro` takes: a model's stage with its dvc.yaml's path
        return " ".join(dvcfiles.address(params, n) for n in names)

    def entry(job: Job) -> dict:
        return {"job": job.name, "runs-on": job.runs_on, **job.extra, "targets": targets(job.stages),
                "peak_rss_gb": round(job.rss_gb, 2), "disk_gb": round(job.disk_gb, 2),
                "pull_gb": round(job.pull_gb, 3), "push_gb": round(job.push_gb, 3), "wall_s": round(job.wall_s),
                **({"below_peak": job.below_peak} if job.below_peak else {}),
                "estimated": [s for s in job.stages if stages[s].estimated]}

    out = {level: [entry(j) for j in jobs if j.level == level] for level in LEVELS}
    for job, e in zip([j for j in jobs if j.level == "assemble"], out["assemble"]):
        e["restore"] = targets(_upstream_of(job.stages, stages))
    if refused:
        out["refused"] = refused
    return out


def _upstream_of(targets: list[str], stages: dict[str, Stage]) -> list[str]:
    """Every stage `targets` read from, directly or not, that is not one of them: what the job restores."""
    seen: dict[str, None] = {}
    todo = [p for t in targets for p in sorted(stages[t].producers)]
    while todo:
        name = todo.pop()
        if name not in seen and name not in targets:
            seen[name] = None
            todo += sorted(stages[name].producers)
    return sorted(seen)


def summary(plan_: dict) -> dict:
    """Job count, critical path (levels run one after another; within one, the slowest job) and remote traffic."""
    levels = [plan_[level] for level in LEVELS]
    return {"jobs": sum(len(lv) for lv in levels),
            "jobs_per_level": {level: len(plan_[level]) for level in LEVELS},
            "critical_path_s": sum(max((j["wall_s"] for j in lv), default=0) for lv in levels),
            "pushed_gb": round(sum(j["push_gb"] for lv in levels for j in lv), 1),
            "pulled_gb": round(sum(j["pull_gb"] for lv in levels for j in lv), 1),
            "largest_job_rss_gb": max(j["peak_rss_gb"] for lv in levels for j in lv),
            "largest_job_disk_gb": max(j["disk_gb"] for lv in levels for j in lv),
            "one_machine_s": sum(j["wall_s"] for lv in levels for j in lv),
            "refused": len(plan_.get("refused", [])), "first_refusals": plan_.get("refused", [])[:3]}


def scale(params: Params, root: Path, n: int, like: str, runners: dict | None) -> dict:
    """The plan for `n` synthetic copies of the published config `like` x every variant in params.yaml, on paper:
    a throw-away DVC project with that params.yaml, this dvc.yaml and each model's, nothing run."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["models"] = {f"m{i:03d}": {"source": "synthetic", "id": like, "revision": f"seed:{i}"} for i in range(n)}
    scaled = validate(raw)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(root / "dvc.yaml", tmp)
        Path(tmp, STAGES).parent.mkdir()
        shutil.copy(root / STAGES, Path(tmp, STAGES))
        Path(tmp, "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        dvcfiles.sync(scaled, Path(tmp))
        Path(tmp, ".dvc").mkdir()  # a DVC project outside git: all Repo() needs to read dvc.yaml
        Path(tmp, ".dvc", "config").write_text("[core]\n    no_scm = true\n")
        return plan(scaled, Path(tmp), runners, strict=False)


def _runners(specs: list[str] | None) -> dict[str, tuple[float, float]]:
    runners = dict(RUNNERS)
    for spec in specs or []:
        try:
            name, sizes = spec.split("=")
            ram, disk = (float(x) for x in sizes.split(","))
        except ValueError:
            raise PipelineError(f"--runner {spec!r}: expected NAME=RAM_GB,DISK_GB (e.g. linux-8core=32,300)") from None
        runners[name] = (ram, disk)
    return runners


def stage(params, layout, scale_models: int | None = None, like: str = "phi-3-mini-4k-instruct",
          runner: list[str] | None = None, github_output: Path | None = None) -> None:
    """`aipc matrix`: print the plan as JSON (or, with --scale N, the summary for N models); --github-output FILE
    appends `upstream=`, `build=`, `windows=`, `assemble=` lines for GitHub Actions' fromJSON."""
    runners = _runners(runner)
    if scale_models is not None:
        if scale_models < 1:
            raise PipelineError("--scale needs a number of models >= 1")
        result = scale(params, layout.root, scale_models, like, runners)
        print(json.dumps({"models": scale_models, "like": like,
                          "variants": len(params.variants), **summary(result)}, indent=2))
        return
    result = plan(params, layout.root, runners)
    if github_output is not None:
        with open(github_output, "a") as f:
            for key, value in result.items():
                f.write(f"{key}={json.dumps(value, separators=(',', ':'))}\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    print(json.dumps(summary(result)), file=sys.stderr)


def push(params, layout, remote: str | None = None, targets: list[str] | None = None) -> None:
    """`aipc push [-r REMOTE] [TARGETS...]`: `dvc push --run-cache` and the objects its run-cache entries name.

    DVC 3.67's push sends the run-cache entries but not the `cache: false` outputs they list (our metrics JSONs,
    which the run cache keeps in .dvc/cache when it saves a run): another machine then finds the entry, misses the
    metrics file and reruns the stage. repo.used_objs(used_run_cache=...) still knows those objects; push them.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(layout.root)) as repo:
        try:
            repo.push(targets=targets or None, remote=remote, run_cache=True)
        except DvcException as e:
            raise PipelineError(f"dvc push{f' -r {remote}' if remote else ''}: {' '.join(str(e).split())}") from None
        used = [(Path(p).parent.name, Path(p).name) for p in _run_entries(repo)]
        objs = set().union(*repo.stage_cache.get_used_objs(used).values()) if used else set()
        result = repo.cloud.push(objs, remote=remote)
        if result.failed:
            raise PipelineError(f"dvc push: {len(result.failed)} run-cache object(s) failed to upload")
    print(f"pushed outputs, {len(used)} run-cache entries and {len(objs)} objects they name")


def _run_entries(repo) -> list[str]:
    runs = Path(repo.cache.legacy.path) / "runs"
    return [str(p) for p in runs.glob("*/*/*")] if runs.is_dir() else []
