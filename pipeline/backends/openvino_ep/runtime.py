"""Running a wrapped model on ONNX Runtime's OpenVINO execution provider: the EP plugin (onnxruntime-ep-openvino)
registered with onnxruntime and onnxruntime-genai, the smoke run, teacher-forced logits and greedy answers.

A device the variant asks for that this machine lacks (GPU, NPU) runs on the EP's CPU device, and the record says
so. Where the EP offers no device at all (the plugin offers Intel hardware only: on an AMD CPU it lists none), the
wrapped IR runs on the same OpenVINO release's CPU plugin with the settings the EP uses (its defaults: where the EP
runs, its logits are bit-identical to that, DESIGN.md), and the record names that fallback and why.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.common import (
    chat_text,
    concluded,
    genai_context_cost,
    genai_greedy,
    genai_prompt,
    genai_tokenizer_parity,
    ov_context_cost,
    ov_feed,
    prompt_record,
    tokenizer_parity,
    versions,
)
from pipeline.backends.openvino_ep import plugin_openvino
from pipeline.backends.openvino_ep.params import OpenVINOEPVariant
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.params import ContextParams, SmokeParams

MODEL_ONNX = "model.onnx"
GENAI_CONFIG = "genai_config.json"
EP = "OpenVINOExecutionProvider"
PROVIDER = "OpenVINO"  # the provider's name in genai_config.json
INTEL = 0x8086


@functools.lru_cache(maxsize=1)
def ep_devices() -> tuple[str, ...]:
    """The OpenVINO devices (CPU, GPU, NPU) the EP offers here, after registering the plugin with onnxruntime and
    onnxruntime-genai (once per process)."""
    try:
        import onnxruntime_ep_openvino
    except ImportError:
        raise PipelineError("onnxruntime-ep-openvino is not installed (the OpenVINO EP plugin; make setup installs "
                            "it)") from None
    import onnxruntime as ort
    import onnxruntime_genai as og
    # The plugin's libopenvino.so.2641 and the openvino package's share a soname: whichever loads first serves both.
    # The plugin's finds its plugins but none of the package's frontends (optimum's export then fails: "FrontEnd for
    # Framework pytorch is not found"), so the package's loads first; the toolchain lock keeps the two one release.
    import openvino  # noqa: F401

    path = onnxruntime_ep_openvino.get_library_path()
    ort.register_execution_provider_library(PROVIDER, path)
    og.register_execution_provider_library(PROVIDER, path)
    return tuple(d.ep_metadata.get("ov_device", "") for d in ort.get_ep_devices() if d.ep_name == EP)


def no_device_reason() -> str:
    """Why the EP offers no device here, in one line (the plugin claims only Intel hardware)."""
    import onnxruntime as ort

    vendors = sorted({f"{d.device.vendor} (0x{d.device.vendor_id:04x})" for d in ort.get_ep_devices()})
    return (f"the OpenVINO EP (onnxruntime-ep-openvino {versions('onnxruntime-ep-openvino')['onnxruntime-ep-openvino']}) "
            f"offers no device here: it claims Intel hardware (0x{INTEL:04x}) only, and this machine's is "
            f"{', '.join(vendors) or 'unknown'}")


def _device(variant: OpenVINOEPVariant) -> tuple[str | None, str | None]:
    """(the EP device to run on or None for none, the fallback taken or None)."""
    offered = ep_devices()
    if variant.device in offered:
        return variant.device, None
    if "CPU" in offered:
        return "CPU", f"no {variant.device} here: the OpenVINO EP's CPU device"
    return None, (f"{no_device_reason()}: the wrapped IR ran on OpenVINO {_openvino_version()}'s CPU plugin with the "
                  "EP's settings, not through onnxruntime")


def _openvino_version() -> str:
    import openvino as ov

    return ov.get_version().split("-", 1)[0]


def smoke(artifact: Path, variant: OpenVINOEPVariant, smoke: SmokeParams, source: Path) -> dict:
    """Generate greedily for each chat prompt on the OpenVINO EP (onnxruntime-genai), after checking that a session
    with CPU fallback disabled takes the whole graph; check the tokenizer against the source's. Never raises for a
    failed run: the failure becomes the record's reason."""
    record = {"status": "failed", "reason": None, "tokenizer_parity": None, "runs": [],
              "versions": {**versions("onnxruntime-genai", "onnxruntime", "onnxruntime-ep-openvino"),
                           "onnxruntime-ep-openvino's OpenVINO": plugin_openvino()}}
    prompts = [p.text for p in smoke.prompts]
    try:
        artifact = Path(artifact)
        device, fallback = _device(variant)
        run = {"requested": f"OpenVINO EP {variant.device}", "device": None, "fallback": fallback}
        record["runs"].append(run)
        if device is None:
            run["device"] = "CPU (OpenVINO, without the EP)"
            import openvino as ov

            tokenizer = _tokenizer(artifact)  # tokenizer.json, which onnxruntime-genai would read
            record["tokenizer_parity"] = tokenizer_parity(
                source, prompts, lambda t: tokenizer.encode(t, add_special_tokens=False).ids,
                lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False))
            compiled = ov.Core().compile_model(str(artifact / _ir_name(artifact)), "CPU")
            run["prompts"] = [_ov_prompt(compiled, _eos(artifact), tokenizer, source, p, smoke.max_new_tokens)
                              for p in smoke.prompts]
            return concluded(record)
        import onnxruntime_genai as og

        run["device"] = f"OpenVINO EP {device}"
        run["whole_graph_on_ep"] = whole_graph_on_ep(artifact, device)
        model = _genai_model(artifact, device)
        record["tokenizer_parity"] = genai_tokenizer_parity(model, source, prompts)
        tokenizer = og.Tokenizer(model)
        run["prompts"] = [genai_prompt(model, tokenizer, source, p, smoke.max_new_tokens) for p in smoke.prompts]
    except Exception as e:
        return concluded(record, e)
    return concluded(record)


def context_cost(artifact: Path, variant: OpenVINOEPVariant, context: ContextParams, lengths: list[int]) -> dict:
    """Time to first token, decode speed and peak RSS at each context length on the EP through onnxruntime-genai
    (or the fallback smoke() takes); the EP compiles with the CPU plugin's defaults, KV cache included."""
    artifact = Path(artifact)
    device, fallback = _device(variant)
    if device is None:
        cost = ov_context_cost(artifact / _ir_name(artifact), {}, lengths, context.new_tokens, artifact.name)
    else:
        cost = genai_context_cost(
            _genai_model(artifact, device), artifact, lengths, context.new_tokens, artifact.name,
            settings={"provider": f"OpenVINO EP {device}"}, kv_cache="the OpenVINO EP's default (u8 on x86 CPUs)",
            kv_element_bytes=None,
            kv_cache_options="the EP passes OpenVINO properties through its load_config provider option "
                             "(e.g. KV_CACHE_PRECISION).")
    return {**cost, "fallback": fallback}


def whole_graph_on_ep(artifact: Path, device: str) -> bool:
    """True once an onnxruntime session with CPU-EP fallback disabled has taken the graph on the EP's `device`;
    raises with onnxruntime's reason otherwise (a node the EP does not claim, an IR it cannot read)."""
    _session(Path(artifact), device, causal=True)
    return True


def _session(artifact: Path, device: str, *, causal: bool):
    import onnxruntime as ort

    ep_devices()
    chosen = [d for d in ort.get_ep_devices() if d.ep_name == EP and d.ep_metadata.get("ov_device") == device]
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(chosen, {"enable_causallm": str(causal)})
    return ort.InferenceSession(str(graph_file(artifact)), options)


def _genai_model(artifact: Path, device: str):
    """The onnxruntime-genai model on the EP's `device` (genai_config.json's own device where it is that one)."""
    import onnxruntime_genai as og

    config = og.Config(str(artifact))
    options = json.loads((artifact / GENAI_CONFIG).read_text())["model"]["decoder"]["session_options"]
    written = options["provider_options"][0][PROVIDER]
    if written.get("device_type") != device:
        config.clear_providers()
        config.append_provider(PROVIDER)
        for key, value in {**written, "device_type": device}.items():
            if key != "load_config":  # the NPU's static shapes: not for the device it runs on instead
                config.set_provider_option(PROVIDER, key, value)
    return og.Model(config)


@functools.lru_cache(maxsize=1)
def _for_logits(artifact: Path, device: str | None, mtime_ns: int):
    """What generate() (and the fallback's logits()) run, loaded once per process (mtime in the key: a rewritten
    model reloads): the genai model on the EP, or the IR compiled for the fallback."""
    if device is None:
        import openvino as ov

        return ov.Core().compile_model(str(artifact / _ir_name(artifact)), "CPU"), None
    return None, _genai_model(artifact, device)


def _loaded(artifact: Path, variant: OpenVINOEPVariant):
    artifact = Path(artifact)
    return _for_logits(artifact, _device(variant)[0], graph_file(artifact).stat().st_mtime_ns)


def graph_file(artifact: Path) -> Path:
    """The EPContext graph genai_config.json names (ours: model.onnx; Olive's: openvino_model.onnx)."""
    decoder = json.loads((Path(artifact) / GENAI_CONFIG).read_text())["model"]["decoder"]
    return Path(artifact) / decoder["filename"]


def _ir_name(artifact: Path) -> str:
    import onnx

    node = onnx.load(str(graph_file(artifact))).graph.node[0]
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "ep_cache_context").decode()


def logits(artifact: Path, variant: OpenVINOEPVariant, input_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab], float32, from one pass on the EP (or the fallback)."""
    device = _device(variant)[0]
    if device is None:
        request = _loaded(artifact, variant)[0].create_infer_request()
        request.reset_state()
        return np.asarray(request.infer(ov_feed(input_ids))["logits"][0], dtype=np.float32)
    # Not the genai model generate() keeps (a second compiled copy beside this one at real size). A session of its own per sequence: the EP keeps the stateful IR's KV cache in the session and offers no reset,
    # so a second run would continue the first sequence. Without enable_causallm it returns every position's logits
    # (with it, only the last; those are bit-identical, measured).
    session = _session(Path(artifact), device, causal=False)
    return np.asarray(session.run(["logits"], ov_feed(input_ids))[0][0], dtype=np.float32)


def generate(artifact: Path, variant: OpenVINOEPVariant, prompts: Sequence[Sequence[int]], max_new_tokens: int
             ) -> list[list[int]]:
    """Greedy new ids for each tokenized prompt through onnxruntime-genai on the EP (or the fallback); stops at the
    eos ids of genai_config.json."""
    runner, genai = _loaded(artifact, variant)
    if genai is not None:
        return [genai_greedy(genai, ids, max_new_tokens)[0] for ids in prompts]
    eos = _eos(Path(artifact))
    return [_ov_greedy(runner, ids, max_new_tokens, eos)[0] for ids in prompts]


def _eos(artifact: Path) -> set[int]:
    eos = json.loads((artifact / GENAI_CONFIG).read_text())["model"]["eos_token_id"]
    return set(eos if isinstance(eos, list) else [eos])


def _ov_greedy(compiled, ids: Sequence[int], max_new_tokens: int, eos: set[int]
               ) -> tuple[list[int], float, float | None]:
    """The fallback's greedy loop over the stateful IR, as the EP runs it: the prompt in one pass, then one id a step."""
    request = compiled.create_infer_request()
    request.reset_state()
    start, first, new = time.perf_counter(), None, []
    feed = ov_feed(ids)
    while len(new) < max_new_tokens:
        token = int(request.infer(feed)["logits"][0, -1].argmax())
        new.append(token)
        first = first or time.perf_counter()
        if token in eos:
            break
        feed = ov_feed([token], past=len(ids) + len(new) - 1)
    return new, start, first


def _tokenizer(artifact: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(artifact / "tokenizer.json"))


def _ov_prompt(compiled, eos: set[int], tokenizer, source: Path, prompt, max_new_tokens: int) -> dict:
    ids = tokenizer.encode(chat_text(source, prompt.text), add_special_tokens=False).ids
    new, start, first = _ov_greedy(compiled, ids, max_new_tokens, eos)
    end = time.perf_counter()
    answer = new[:-1] if new and new[-1] in eos else new
    return prompt_record(prompt, tokenizer.decode(answer), prompt_tokens=len(ids), new_tokens=len(answer),
                         ttft_ms=(first - start) * 1000 if first else None,
                         tokens_per_s=(len(new) - 1) / (end - first) if len(new) > 1 else None)
