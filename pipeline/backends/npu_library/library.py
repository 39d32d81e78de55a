"""intel-npu-acceleration-library route (legacy upstream: Intel archived the library in favour of OpenVINO GenAI,
its issue #165; the OpenVINO NPU variants are the recommended route).

The library lives in an environment of its own (`env/create.py` beside this file makes `.venv-npu/`: it needs
openvino 2024.4, numpy<2 and a patched sdist build), so every verb runs `env/worker.py` there as a
subprocess, one per call: a second compile in a process that already generated aborts (DESIGN.md).

The artifact is portable (safetensors + manifest, no pickle, no absolute path; see worker.py); export reloads it in
a fresh process and fails unless the reloaded model's logits equal the exported model's bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.common import (
    chat_text,
    concluded,
    files_record,
    prompt_record,
    source_ids,
    tokenizer_parity,
)
from pipeline.backends.npu_library.params import NpuLibraryVariant
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.params import SmokeParams

ROOT = Path(__file__).resolve().parents[3]
ENV = Path(__file__).resolve().parent / "env"
WORKER = ENV / "worker.py"
# The environment create.py makes; AIPC_NPU_VENV points elsewhere (absolute, or relative to the project root).
VENV_ENV = "AIPC_NPU_VENV"
DEFAULT_VENV = ".venv-npu"
PROBE = np.random.default_rng(0).integers(8, 256, 32).tolist()  # the reload check's input ids (any small vocab)


def python() -> Path:
    venv = Path(os.environ.get(VENV_ENV, DEFAULT_VENV))
    exe = (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"
    if not exe.is_file():
        raise PipelineError(
            f"{exe.parent.parent}: no intel-npu-acceleration-library environment; create it with "
            f"`python {ENV.relative_to(ROOT) / 'create.py'} {venv}`"
        )
    return exe


def lock_lines() -> list[str]:
    """Its environment is made from these pins by env/create.py: the pins are the lock (toolchain/npu_library.txt)."""
    from pipeline.backends.npu_library.env import create

    return sorted([create.LIBRARY, *create.REQUIREMENTS])


def _worker(*args: str, request: dict) -> tuple[dict, list[np.ndarray]]:
    """Run one worker command in the library's environment; return its result and the logits it computed, one
    array per sequence of request["logits"]. A `run` (read-only: the artifact is only loaded) that dies of SIGSEGV
    is run once more: the archived library's CPU path crashes now and then (a tiny model's smoke, once in three
    test suites on a loaded machine), and its result then says so."""
    try:
        return _worker_once(*args, request=request)
    except _Crashed as crash:
        if args[0] != "run":
            raise
        print(f"[npu-lib] {crash}; running it once more", file=sys.stderr)
        result, logits = _worker_once(*args, request=request)
        return {**result, "retried": str(crash)}, logits


class _Crashed(PipelineError):
    """A worker killed by SIGSEGV: a PipelineError (one line) wherever it is not retried, a second crash too."""


def _worker_once(*args: str, request: dict) -> tuple[dict, list[np.ndarray]]:
    with tempfile.TemporaryDirectory(prefix="aipc-npu-") as tmp:
        tmp = Path(tmp)
        (tmp / "request.json").write_text(json.dumps(request))
        cmd = [str(python()), "-X", "faulthandler", str(WORKER), *args,
               str(tmp / "request.json"), str(tmp / "result.json")]
        # cwd: the library writes an OpenVINO kernel cache to ./cache and neural-compressor its ./nc_workspace.
        # The worker imports pipeline.weights and pipeline.record.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        # Its stderr is passed on as it comes (a full-size export's progress, a line per decoder layer, was held back
        # until the worker ended); its last line names the cause of a failure.
        last = "no output"
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp,
                              env={**os.environ, "PYTHONPATH": path}) as proc:
            for line in proc.stderr:
                sys.stderr.write(line)
                if line.strip() and "Warning" not in line:
                    last = line.strip()
        if proc.returncode != 0:
            failed = f"intel-npu-acceleration-library worker `{args[0]}` failed (exit {proc.returncode}): {last}"
            raise _Crashed(failed) if proc.returncode == -signal.SIGSEGV else PipelineError(failed)
        logits = [np.load(tmp / f"logits-{i}.npy") for i in range(len(request.get("logits", [])))]
        return json.loads((tmp / "result.json").read_text()), logits


def export(source: Path, variant: NpuLibraryVariant, out: Path, *, inputs: dict[str, Path], smoke: SmokeParams) -> dict:
    """Quantize `source` with the library and write the portable artifact into `out`; check that it reloads to
    the same logits. `inputs` (none) and `smoke` are not used."""
    source, out = Path(source).resolve(), Path(out).resolve()  # the worker runs in a temp cwd
    start = time.perf_counter()
    exported, (before,) = _worker("export", str(source), str(out), variant.dtype, request={"logits": [PROBE]})
    phases = [*exported["phases"], ["worker start, probe logits, exit", round(
        time.perf_counter() - start - sum(s for _, s in exported["phases"]), 2)]]
    reload_start = time.perf_counter()
    reloaded, (after,) = _worker("run", str(out), request={"logits": [PROBE]})
    phases.append(["reload in a fresh process, logits compared", round(time.perf_counter() - reload_start, 2)])
    diff = float(np.abs(before - after).max())
    if diff != 0.0:
        raise PipelineError(f"{out.name}: reloading the safetensors gives other logits than the exported model "
                            f"(max |diff| {diff:g})")
    manifest_text = (out / "npu_model.json").read_text()
    if str(source) in manifest_text or str(out) in manifest_text:
        raise PipelineError(f"{out.name}/npu_model.json holds an absolute path")
    return {
        "variant": variant.model_dump(),
        "method": "intel-npu-acceleration-library NPUModelForCausalLM.from_pretrained(CompilerConfig(dtype="
                  f"{variant.dtype})), quantized weights and scales saved as safetensors",
        "seconds": round(time.perf_counter() - start, 2),
        "phases": phases,
        "quantized_layers": exported["quantized_layers"],
        "device": exported["device"],
        "fallback": exported["fallback"],
        "reload": {"max_abs_logit_diff": diff, "load_s": reloaded["load_s"], "probe_tokens": len(PROBE)},
        "files": files_record(out),
        "versions": {"intel-npu-acceleration-library": exported["library_version"]},
    }


def smoke(artifact: Path, variant: NpuLibraryVariant, smoke: SmokeParams, source: Path) -> dict:
    """Generate greedily for each chat prompt through the library (its CPU fallback where no NPU exists) and check
    the artifact's tokenizer against the source's. Never raises for a failed run."""
    record = {"status": "failed", "reason": None, "tokenizer_parity": None, "runs": [], "versions": {}}
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(artifact)
        record["tokenizer_parity"] = tokenizer_parity(
            source,
            [p.text for p in smoke.prompts],
            encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False),
        )
        prompt_ids = [source_ids(source, chat_text(source, p.text)) for p in smoke.prompts]
        result, _ = _worker("run", str(Path(artifact).resolve()), request={
            "generate": [{"ids": ids, "max_new_tokens": smoke.max_new_tokens} for ids in prompt_ids]
        })
        eos = set(_eos_ids(Path(artifact)))
        run = {"requested": result["requested"], "device": result["device"], "fallback": result["fallback"],
               "config": {"dtype": variant.dtype, "greedy": True}, "load_s": result["load_s"], "prompts": []}
        for prompt, ids, gen in zip(smoke.prompts, prompt_ids, result["generate"]):
            new = gen["new_ids"]
            answer = new[:-1] if new and new[-1] in eos else new
            text = tokenizer.decode(answer, skip_special_tokens=True)
            run["prompts"].append(prompt_record(
                prompt, text, prompt_tokens=len(ids), new_tokens=len(answer),
                ttft_ms=None,  # transformers' generate() does not time the first token
                tokens_per_s=len(new) / gen["seconds"] if gen["seconds"] > 0 else None))
        record["runs"].append(run)
        library = json.loads((Path(artifact) / "npu_model.json").read_text())["library_version"]
        record["versions"] = {"intel-npu-acceleration-library": library}
    except Exception as e:
        return concluded(record, e)
    return concluded(record)


def _eos_ids(artifact: Path) -> list[int]:
    for name in ("generation_config.json", "config.json"):
        path = artifact / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return eos if isinstance(eos, list) else [eos]
    return []


def generate(artifact: Path, variant: NpuLibraryVariant, prompts: Sequence[Sequence[int]], max_new_tokens: int
             ) -> list[list[int]]:
    """Greedy new ids for each tokenized prompt, from the reloaded model (one worker process for all of them)."""
    result, _ = _worker("run", str(Path(artifact).resolve()), request={
        "generate": [{"ids": [int(i) for i in ids], "max_new_tokens": max_new_tokens} for ids in prompts]})
    return [gen["new_ids"] for gen in result["generate"]]


def logits(artifact: Path, variant: NpuLibraryVariant, input_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab], float32, from the reloaded model (one worker process)."""
    return logits_many(artifact, variant, [input_ids])[0]


def logits_many(artifact: Path, variant: NpuLibraryVariant, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """logits() of each sequence from one worker process: loading and compiling the model costs ~7 s a process,
    which the quality stage paid once per sequence."""
    _, out = _worker("run", str(Path(artifact).resolve()),
                     request={"logits": [[int(i) for i in ids] for ids in sequences]})
    return [a.astype(np.float32) for a in out]
