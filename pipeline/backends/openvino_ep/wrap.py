"""The export: an OpenVINO IR this pipeline built, wrapped for ONNX Runtime's OpenVINO execution provider.

What Olive's OpenVINOEncapsulation writes, with only what the EP reads (onnxruntime-ep-openvino 1.8.1; DESIGN.md):
  model.onnx          one com.microsoft EPContext node whose inputs and outputs are the stateful IR's, with the
                      attributes the EP requires to claim it: `source` (OpenVINOExecutionProvider), `embed_mode` 0 and
                      `ep_cache_context`, the IR's .xml beside it. Without any one of the three the session refuses
                      the node (measured). `ep_sdk_version` is compared only for compiled blobs, `main_context` only
                      for shared contexts, `DeviceClass` is read by nothing: not written.
  genai_config.json   the decoder on the OpenVINO provider: `device_type` (which OpenVINO device), `enable_causallm`
                      "True" (the EP runs the IR as a stateful LLM; onnxruntime-genai then leaves the KV cache to it:
                      it tests for exactly "True"), and for NPU `load_config` with the static prompt/response lengths
                      the EP hands the NPU's LLM pipeline (MAX_PROMPT_LEN, MIN_RESPONSE_LEN).
  the IR and its tokenizer files, hard-linked from the wrapped artifact: a release is self-contained.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import fsutil
from pipeline.backends.common import files_record, one_line, versions
from pipeline.backends.openvino_ep.params import OpenVINOEPVariant
from pipeline.backends.openvino_ep import plugin_openvino
from pipeline.backends.openvino_ep.runtime import GENAI_CONFIG, MODEL_ONNX
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.params import SmokeParams

IR_XML = "openvino_model.xml"
EP_NAME = "OpenVINOExecutionProvider"
# The IR's element types as ONNX tensor types (a stateful decoder IR: int64 ids and masks, int32 beam_idx, f32 logits).
ONNX_TYPES = {"i64": "INT64", "i32": "INT32", "f32": "FLOAT", "f16": "FLOAT16", "bf16": "BFLOAT16"}


def export(source: Path, variant: OpenVINOEPVariant, out: Path, *, inputs: dict[str, Path], smoke: SmokeParams
           ) -> dict:
    """Wrap the IR of `inputs[variant.wraps]` into `out` (an empty staging dir) and read the result back."""
    ir, out = Path(inputs[variant.wraps]), Path(out)
    if not (ir / IR_XML).is_file():
        raise PipelineError(f"{variant.wraps} is not an OpenVINO IR (no {IR_XML} in {ir}): wrap an openvino variant")
    start = time.perf_counter()
    ports = _ir_ports(ir / IR_XML)
    for path in sorted(ir.rglob("*")):
        if path.is_file() and path.name != fsutil.MANIFEST:
            fsutil.link_or_copy(path, out / path.relative_to(ir))
    _write_graph(out / MODEL_ONNX, ports)
    options = provider_options(variant, smoke)
    config = genai_config(ir, ports, options)
    (out / GENAI_CONFIG).write_text(json.dumps(config, indent=4) + "\n")
    return {
        "method": f"EPContext wrap of {variant.wraps}'s IR",
        "wraps": variant.wraps,
        "provider_options": options,
        "io": read_back(out),
        "seconds": round(time.perf_counter() - start, 2),
        "versions": {**versions("onnx", "openvino"), "onnxruntime-ep-openvino's OpenVINO": plugin_openvino()},
        "files": files_record(out),
    }


def _ir_ports(xml: Path) -> dict[str, list[tuple[str, str, list]]]:
    """The IR's inputs and outputs (name, ONNX type, shape with a symbol per dynamic dim), read with OpenVINO; an
    IR newer than the EP plugin's own OpenVINO fails here, naming both."""
    import openvino as ov

    try:
        model = ov.Core().read_model(xml)
    except Exception as e:
        raise PipelineError(f"{xml}: OpenVINO {ov.get_version()} cannot read it: {one_line(e)}") from e
    written = _written_by(xml)
    plugin = plugin_openvino()
    if written and plugin and _release(written) > _release(plugin):
        raise PipelineError(f"{xml.name} was written by OpenVINO {written}; onnxruntime-ep-openvino bundles OpenVINO "
                            f"{plugin}, which cannot read IRs of a newer release")
    ports = {}
    for kind, items in (("inputs", model.inputs), ("outputs", model.outputs)):
        ports[kind] = []
        for i, port in enumerate(items):
            element = port.get_element_type().get_type_name()
            if element not in ONNX_TYPES:
                raise PipelineError(f"{xml}: {kind[:-1]} {port.get_any_name()} is {element}, which an EPContext graph "
                                    "cannot declare here")
            shape = [d.get_length() if d.is_static else f"{kind[:-1]}_{i}_{j}"
                     for j, d in enumerate(port.get_partial_shape())]
            ports[kind].append((port.get_any_name(), ONNX_TYPES[element], shape))
    return ports


def _written_by(xml: Path) -> str | None:
    """The OpenVINO release that wrote the IR, from the model's rt_info at the end of the .xml (read_model reports
    the reading runtime's instead)."""
    with open(xml, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 65536))
        m = re.search(rb'<Runtime_version value="([^"]+)"', f.read())
    return m[1].decode() if m else None


def _release(version: str) -> tuple[int, ...]:
    """(2026, 4, 1) from '2026.4.1-20797-...'."""
    head = version.split("-", 1)[0]
    return tuple(int(p) for p in head.split(".") if p.isdigit())


def _write_graph(path: Path, ports: dict) -> None:
    import onnx
    from onnx import TensorProto, helper

    def values(kind):
        return [helper.make_tensor_value_info(name, getattr(TensorProto, t), shape) for name, t, shape in ports[kind]]

    node = helper.make_node("EPContext", [p[0] for p in ports["inputs"]], [p[0] for p in ports["outputs"]],
                            name="OpenVINOEPContext", domain="com.microsoft",
                            source=EP_NAME, embed_mode=0, ep_cache_context=IR_XML)
    graph = helper.make_graph([node], "openvino_ep_context", values("inputs"), values("outputs"))
    model = helper.make_model(graph, producer_name="aipc-pipeline",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10  # what onnxruntime 1.23+ (Windows ML's) loads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def provider_options(variant: OpenVINOEPVariant, smoke: SmokeParams) -> dict[str, str]:
    """The OpenVINO provider's options in genai_config.json (strings, as onnxruntime-genai passes them)."""
    options = {"device_type": variant.device, "enable_causallm": "True"}
    if variant.device == "NPU":
        # UNTESTED HERE (no NPU): the EP builds the NPU's static-shape LLM pipeline from these two (NPUW_LLM_MAX_PROMPT_LEN,
        # NPUW_LLM_MIN_RESPONSE_LEN); the same limits as the wrapped IR's NPU pre-flight.
        options["load_config"] = json.dumps({"NPU": {"MAX_PROMPT_LEN": smoke.npu_max_prompt_len,
                                                     "MIN_RESPONSE_LEN": smoke.npu_min_response_len}})
    return options


def genai_config(ir: Path, ports: dict, options: dict[str, str]) -> dict:
    """onnxruntime-genai's config for the wrapped decoder, from the IR's config.json and generation_config.json."""
    config = json.loads((ir / "config.json").read_text())
    generation = json.loads((ir / "generation_config.json").read_text()) if (ir / "generation_config.json").is_file() else {}
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    pad = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
    context = config["max_position_embeddings"]
    heads = config["num_attention_heads"]
    names = {name for kind in ports.values() for name, _, _ in kind}
    wanted = {"input_ids", "attention_mask", "position_ids", "beam_idx", "logits"}
    if not wanted <= names:
        raise PipelineError(f"the IR is not a stateful decoder: it lacks {', '.join(sorted(wanted - names))}")
    return {
        "model": {
            "bos_token_id": config.get("bos_token_id"),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [{"OpenVINO": options}]},
                "filename": MODEL_ONNX,
                "head_size": config.get("head_dim") or config["hidden_size"] // heads,
                "hidden_size": config["hidden_size"],
                # beam_idx is the stateful IR's own: onnxruntime-genai feeds it without being told
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"},
                "outputs": {"logits": "logits"},
                "num_attention_heads": heads,
                "num_hidden_layers": config["num_hidden_layers"],
                "num_key_value_heads": config.get("num_key_value_heads", heads),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": config["model_type"],
            "vocab_size": config["vocab_size"],
        },
        "search": {"do_sample": False, "max_length": context, "num_beams": 1, "num_return_sequences": 1,
                   # the EP owns the KV cache of a stateful model: there is no present buffer to share
                   "past_present_share_buffer": False},
    }


def read_back(artifact: Path) -> dict:
    """The written graph against the IR beside it and genai_config.json against the graph: one EPContext node whose
    inputs and outputs are the IR's, in order and type; an IR file that exists; config names the graph has."""
    import onnx

    artifact = Path(artifact)
    model = onnx.load(str(artifact / MODEL_ONNX))
    nodes = list(model.graph.node)
    if len(nodes) != 1 or nodes[0].op_type != "EPContext":
        raise PipelineError(f"{artifact / MODEL_ONNX}: expected one EPContext node, found "
                            f"{[n.op_type for n in nodes]}")
    node = nodes[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    target = artifact / attrs["ep_cache_context"].decode()
    if not target.is_file():
        raise PipelineError(f"{artifact / MODEL_ONNX}: ep_cache_context names {target.name}, which is not there")
    ports = _ir_ports(target)
    for kind, declared in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        got = [(v.name, onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)) for v in declared]
        want = [(name, t) for name, t, _ in ports[kind]]
        if got != want:
            raise PipelineError(f"{artifact / MODEL_ONNX}: graph {kind} {got} are not the IR's {want}")
    decoder = json.loads((artifact / GENAI_CONFIG).read_text())["model"]["decoder"]
    graph_names = {v.name for v in (*model.graph.input, *model.graph.output)}
    named = {*decoder["inputs"].values(), *decoder["outputs"].values()}
    if not named <= graph_names or decoder["filename"] != MODEL_ONNX:
        raise PipelineError(f"{artifact / GENAI_CONFIG}: names {sorted(named - graph_names) or decoder['filename']}, "
                            f"which {MODEL_ONNX} does not have")
    return {"inputs": [p[0] for p in ports["inputs"]], "outputs": [p[0] for p in ports["outputs"]],
            "ep_cache_context": target.name}
