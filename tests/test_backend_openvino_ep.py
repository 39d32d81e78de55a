"""The OpenVINO execution provider backend (the Windows ML route) on the tiny Phi-3 family: the EPContext wrap read
back against the IR it wraps, broken wraps refused, and runs through onnxruntime-genai on the EP.

The EP plugin (onnxruntime-ep-openvino) offers Intel hardware only: on an AMD machine it lists no device, and the
tests that need the EP itself skip with that reason while the fallback (the wrapped IR on the same OpenVINO) runs."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import yaml

from pipeline import params as params_mod
from pipeline.backends import openvino as ov_backend
from pipeline.backends import openvino_ep as backend
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.backends.openvino.runtime import greedy
from pipeline.backends.openvino_ep import runtime, wrap
from pipeline.backends.openvino_ep.params import OpenVINOEPVariant
from pipeline.errors import PipelineError
from pipeline.layout import IR_FP16
from pipeline.params import Prompt, SmokeParams
from tests import tiny
from tests.conftest import ROOT, assert_greedy

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

SMOKE = SmokeParams(prompts=[Prompt(text="What is the capital of France?"), Prompt(text="Write one sentence.")],
                    max_new_tokens=8, npu_max_prompt_len=128, npu_min_response_len=32)
WRAPPED = {"ov-int4": OpenVINOVariant(weight_format="int4", group_size=128, ratio=0.6, sym=True),
           "ov-int4-npu": OpenVINOVariant(weight_format="int4", group_size=-1, ratio=1.0, sym=True, npu=True)}
GPU = OpenVINOEPVariant(wraps="ov-int4", device="GPU", precision="int4")
NPU = OpenVINOEPVariant(wraps="ov-int4-npu", device="NPU", precision="int4")
IDS = np.random.default_rng(0).integers(8, tiny.VOCAB, 48).tolist()
needs_ep = pytest.mark.skipif(not runtime.ep_devices(), reason="" if runtime.ep_devices() else runtime.no_device_reason())


def _dir(path):
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def irs(tiny_models, odd_width_model, tmp_path_factory) -> dict:
    """(kind, openvino variant) -> its IR dir, for every tiny family member and the odd-width model."""
    base = tmp_path_factory.mktemp("ovep-irs")
    made = {}
    for kind, src in {**tiny_models, "odd-width": odd_width_model}.items():
        fp16 = ov_backend.export_ir(src, _dir(base / kind / "fp16")) and base / kind / "fp16"
        for name, variant in WRAPPED.items():
            out = _dir(base / kind / name)
            ov_backend.export(src, variant, out, inputs={IR_FP16: fp16}, smoke=SMOKE)
            made[kind, name] = out
    return made


@pytest.fixture(scope="module")
def wrapped(tiny_models, odd_width_model, irs, tmp_path_factory) -> dict:
    """(kind, ep variant device) -> (artifact dir, export record)."""
    base = tmp_path_factory.mktemp("ovep")
    sources = {**tiny_models, "odd-width": odd_width_model}
    return {(kind, v.device): (base / kind / v.device,
                                backend.export(src, v, _dir(base / kind / v.device),
                                               inputs={v.wraps: irs[kind, v.wraps]}, smoke=SMOKE))
            for kind, src in sources.items() for v in (GPU, NPU)}


def test_wrap_holds_one_epcontext_node_with_the_irs_io_and_only_options_the_ep_reads(wrapped, irs):
    for (kind, device), (out, record) in wrapped.items():
        model = onnx.load(str(out / "model.onnx"))
        (node,) = model.graph.node
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        # The three the EP needs to claim the node (each measured: without it the strict session refuses it).
        assert attrs == {"source": b"OpenVINOExecutionProvider", "embed_mode": 0,
                         "ep_cache_context": b"openvino_model.xml"}, kind
        assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
        assert [o.name for o in model.graph.output] == ["logits"]
        assert record["io"]["inputs"] == [i.name for i in model.graph.input]
        options = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
        (provider,) = options["provider_options"]
        expected = {"device_type": device, "enable_causallm": "True"}
        if device == "NPU":
            expected["load_config"] = json.dumps({"NPU": {"MAX_PROMPT_LEN": 128, "MIN_RESPONSE_LEN": 32}})
        assert provider == {"OpenVINO": expected}
        ir = irs[kind, "ov-int4" if device == "GPU" else "ov-int4-npu"]
        # Self-contained: the wrapped IR's files, the same inodes (hard links), no manifest of the IR's own.
        for name in ("openvino_model.xml", "openvino_model.bin", "tokenizer.json", "openvino_tokenizer.xml"):
            assert (out / name).stat().st_ino == (ir / name).stat().st_ino, name
        assert "manifest.sha256.json" not in record["files"]


def _with_graph(out, dest, edit):
    """`dest`: the wrap in `out` (its files symlinked) with model.onnx edited by `edit(model)`."""
    dest.mkdir()
    for f in out.iterdir():
        if f.name != "model.onnx":
            (dest / f.name).symlink_to(f)
    model = onnx.load(str(out / "model.onnx"))
    edit(model)
    onnx.save(model, str(dest / "model.onnx"))
    return dest


def test_a_wrap_with_wrong_io_names_fails_read_back(wrapped, tmp_path):
    out, _ = wrapped["mini-4k", "GPU"]

    def rename(model):
        model.graph.input[2].name = "position_id"
        model.graph.node[0].input[2] = "position_id"

    broken = _with_graph(out, tmp_path / "broken", rename)
    with pytest.raises(PipelineError, match=r"graph inputs .*position_id.* are not the IR's"):
        wrap.read_back(broken)


def test_wrapping_an_ir_newer_than_the_eps_openvino_fails_naming_both(irs, tiny_model, tmp_path):
    ir = tmp_path / "ir"
    ir.mkdir()
    for f in irs["mini-4k", "ov-int4"].iterdir():
        (ir / f.name).symlink_to(f)
    xml = (irs["mini-4k", "ov-int4"] / "openvino_model.xml").read_text()
    (ir / "openvino_model.xml").unlink()
    (ir / "openvino_model.xml").write_text(re.sub(r'<Runtime_version value="[^"]*"', '<Runtime_version value="2099.1.0-1"', xml))
    with pytest.raises(PipelineError, match=r"written by OpenVINO 2099\.1\.0-1; onnxruntime-ep-openvino bundles "
                                            r"OpenVINO 2026\.4\.1"):
        backend.export(tiny_model, GPU, _dir(tmp_path / "out"), inputs={"ov-int4": ir}, smoke=SMOKE)


def test_wrapping_what_is_not_an_ir_fails_in_one_line(tiny_model, tmp_path):
    with pytest.raises(PipelineError, match="ov-int4 is not an OpenVINO IR"):
        backend.export(tiny_model, GPU, _dir(tmp_path / "out"), inputs={"ov-int4": _dir(tmp_path / "ort")}, smoke=SMOKE)


def test_smoke_logits_and_greedy_on_every_family_member(wrapped, tiny_models, odd_width_model):
    sources = {**tiny_models, "odd-width": odd_width_model}
    for (kind, device), (out, _) in wrapped.items():
        variant = GPU if device == "GPU" else NPU
        record = backend.smoke(out, variant, SMOKE, sources[kind])
        assert record["status"] == "passed", (kind, device, record["reason"])
        (run,) = record["runs"]
        assert run["requested"] == f"OpenVINO EP {device}"
        if runtime.ep_devices():
            assert run["device"].startswith("OpenVINO EP ") and run["whole_graph_on_ep"] is True
        else:  # recorded plainly: which fallback, and why
            assert run["device"] == "CPU (OpenVINO, without the EP)"
            assert "claims Intel hardware (0x8086) only" in run["fallback"]
        assert backend.logits(out, variant, IDS).shape == (len(IDS), tiny.VOCAB)
        # The EP compiles with the CPU plugin's defaults: bf16 where the CPU has it, and a u8 KV cache, so the decode
        # and the one-pass prefill round further apart than f32's 1%.
        assert_greedy(backend, out, variant, IDS[:16], slack=4e-2)


@needs_ep
def test_the_whole_graph_runs_on_the_ep_and_a_node_it_does_not_claim_is_refused(wrapped, tmp_path):
    out, _ = wrapped["mini-4k", "GPU"]
    assert runtime.whole_graph_on_ep(out, "CPU")
    # A wrap whose node the EP does not claim (another EP's context) leaves it to the CPU EP: refused.
    def other_eps(model):
        next(a for a in model.graph.node[0].attribute if a.name == "source").s = b"QNNExecutionProvider"

    broken = _with_graph(out, tmp_path / "fallback", other_eps)
    with pytest.raises(Exception, match="fallback to CPU EP has been explicitly disabled"):
        runtime.whole_graph_on_ep(broken, "CPU")


@needs_ep
def test_same_greedy_tokens_as_openvino_genai_on_the_ir_it_wraps(wrapped, irs, tiny_models):
    import openvino_genai

    for kind in tiny_models:
        for device, name in (("GPU", "ov-int4"), ("NPU", "ov-int4-npu")):
            out, _ = wrapped[kind, device]
            variant = GPU if device == "GPU" else NPU
            # openvino-genai's stateful (SDPA) pipeline with the CPU plugin's defaults: what the EP runs the IR as. Its
            # default on CPU, the paged-attention pipeline, rounds otherwise and parts ways at the tiny models' near-ties.
            pipe = openvino_genai.LLMPipeline(str(irs[kind, name]), "CPU", ATTENTION_BACKEND="SDPA")
            for prompt in (IDS[:12], IDS[12:40]):
                ours = backend.generate(out, variant, [prompt], 8)[0]
                theirs = greedy(pipe, prompt, 8)
                assert ours == theirs[:len(ours)], (kind, device, ours, theirs)


def _params(edit) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["variants"]["openvino_ep"]["ovep-int4-gpu"].update(wraps="ov-int5"),
     "wraps 'ov-int5', which is not a variant; did you mean 'ov-int4'"),
    (lambda r: r["variants"]["openvino_ep"]["ovep-int4-gpu"].update(wraps="ov-fp16"),
     r"variant ovep-int4-gpu \(int4\) wraps ov-fp16, which is fp16"),
    (lambda r: r["models"]["smollm2"].update(variants=["ovep-int4-gpu"]),
     "models.smollm2 builds ovep-int4-gpu, which wraps ov-int4, but not ov-int4"),
])
def test_params_refuse_a_wrap_of_what_the_model_does_not_build(edit, message):
    with pytest.raises(PipelineError, match=message):
        params_mod.validate(_params(edit))
