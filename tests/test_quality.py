"""reference -> quality -> report on the tiny Phi-3 (mini-4k): the metrics tell fp16 from int4, a deliberately broken
IR fails the gate by name, and `enforce: false` lets it through while still listing the misses."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import fsutil
from pipeline.stages import quality, reference, report
from pipeline.backends import openvino as ov_backend
from pipeline.backends.openvino.convert import MODEL_BIN
from pipeline.backends.openvino.readback import MODEL_XML
from pipeline.gate import misses
from pipeline.errors import PipelineError
from pipeline.layout import IR_FP16
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.params import Prompt, SmokeParams, QualityParams, Thresholds
from tests.conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

FP16 = OpenVINOVariant(backend="openvino", weight_format="fp16")
INT4 = OpenVINOVariant(backend="openvino", weight_format="int4", group_size=128, ratio=0.6, sym=True)  # as shipped
TOP_K, LONG, MAX_NEW = 32, 300, 8
BROKEN_LAYER = "down_proj"  # first MLP output projection: scaled x3 below
SMOKE = SmokeParams(prompts=[Prompt(text="Hi")])
ALL = {"tiny": ["ov-fp16", "ov-int4", "ov-broken"]}  # the report's model -> the variants it builds
GATE = QualityParams(
    top_k=TOP_K,
    long_sequence_tokens=LONG,
    max_new_tokens=MAX_NEW,
    thresholds={
        "fp16": Thresholds(min_cosine=0.999, min_top1=0.98, max_kl=1e-3, max_ppl_ratio=1.01),
        "int4": Thresholds(min_cosine=0.95, min_top1=0.5, max_kl=0.3, max_ppl_ratio=1.3),
    },
)


def _empty(path):
    path.mkdir(parents=True)
    return path


def _break(fp16_dir, out):
    """A copy of the fp16 IR with the first `down_proj` weight scaled by 3: it loads and runs, and is wrong."""
    import openvino as ov

    shutil.copytree(fp16_dir, out, ignore=shutil.ignore_patterns(fsutil.MANIFEST, MODEL_XML,
                                                                   MODEL_BIN))
    model = ov.Core().read_model(fp16_dir / MODEL_XML)
    const = next(op for op in model.get_ordered_ops()
                 if op.get_type_name() == "Constant" and BROKEN_LAYER in op.get_friendly_name()
                 and len(op.get_output_shape(0)) == 2)
    data = const.get_data()
    scaled = ov.op.Constant((data.astype(np.float32) * 3).astype(data.dtype))
    for target in list(const.output(0).get_target_inputs()):
        target.replace_source_output(scaled.output(0))
    ov.save_model(model, out / MODEL_XML, compress_to_fp16=False)
    return const.get_friendly_name()


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("quality-ov")
    ir = _empty(base / "ir")
    ov_backend.export_ir(tiny_model, ir)
    made = {}
    for name, variant in (("ov-fp16", FP16), ("ov-int4", INT4)):
        made[name] = _empty(base / name)
        ov_backend.export(tiny_model, variant, made[name], inputs={IR_FP16: ir}, smoke=SMOKE)
    made["ov-broken"] = base / "ov-broken"
    _break(made["ov-fp16"], made["ov-broken"])
    return made


@pytest.fixture(scope="module")
def reference_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality-ref") / "reference"
    evalset = reference.load_evalset(ROOT / GATE.evalset)
    reference.run(tiny_model, evalset, out, max_new_tokens=MAX_NEW, top_k=TOP_K, long_sequence_tokens=LONG)
    return out


@pytest.fixture(scope="module")
def measured(artifacts, reference_dir, tiny_model) -> dict:
    variants = {"ov-fp16": FP16, "ov-int4": INT4, "ov-broken": FP16}
    return {name: quality.measure(artifacts[name], variants[name], reference_dir, tiny_model) for name in variants}


@pytest.fixture
def metrics_root(measured, tmp_path):
    for name, rec in measured.items():
        fsutil.write_json(tmp_path / "tiny" / name / "quality.json", rec)
    return tmp_path


def test_reference_is_compact_and_complete(reference_dir):
    ref, arrays = reference.load(reference_dir)  # verifies the manifest too
    names = [s["name"] for s in ref["sequences"]]
    assert names == ["chat-0", "chat-1", "chat-2", "chat-3", "text", "long"]
    long = next(s for s in ref["sequences"] if s["name"] == "long")
    assert long["len"] == LONG and arrays["long.ids"].shape == (LONG,)
    for name in names:
        n = len(arrays[f"{name}.ids"])
        assert arrays[f"{name}.topk_ids"].shape == (n, TOP_K) and arrays[f"{name}.topk_ids"].dtype == np.int32
        assert arrays[f"{name}.topk_logprobs"].dtype == np.float32 and arrays[f"{name}.lse"].shape == (n,)
        # best first, and log-probabilities (<= 0)
        lp = arrays[f"{name}.topk_logprobs"].astype(np.float32)
        assert (np.diff(lp, axis=-1) <= 1e-3).all() and (lp <= 1e-3).all()
    for s in ref["sequences"][:4]:
        assert 1 <= len(s["answer_ids"]) <= MAX_NEW and s["len"] == s["prompt_len"] + len(s["answer_ids"])
    assert all(s["ppl"] > 1 for s in ref["sequences"] if s["kind"] == "text")


def test_topk_metrics_against_full_vocabulary():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 4, (16, 200))
    art = ref + rng.normal(0, 0.5, ref.shape)
    lse = np.log(np.exp(ref).sum(-1))
    p, q = np.exp(ref - lse[:, None]), np.exp(art - np.log(np.exp(art).sum(-1))[:, None])
    full_kl = (p * (np.log(p) - np.log(q))).sum(-1)

    def at(k):
        ids = np.argsort(-ref, axis=-1)[:, :k]
        lp = (np.take_along_axis(ref, ids, -1) - lse[:, None]).astype(np.float32)
        return quality.position_metrics(art, ids.astype(np.int32), lp, lse.astype(np.float32))

    whole, top = at(200), at(32)
    np.testing.assert_allclose(whole["kl"], full_kl, rtol=1e-4, atol=1e-6)  # k = vocab: the exact KL
    assert (top["kl"] <= full_kl + 1e-4).all()  # coarsening: a lower bound
    assert (whole["top1"] == (art.argmax(-1) == ref.argmax(-1))).all()



def test_full_vocabulary_arithmetic_a_block_of_rows_at_a_time_changes_no_bit(monkeypatch):
    """The reference's logsumexp, its perplexity and the quality metrics run on blocks of rows (Phi-4-mini's 200064
    columns made whole float64 copies GBs); every row's arithmetic must stay what it was, so stored references and
    quality.json do not move."""
    import torch

    rng = np.random.default_rng(1)
    ref = rng.normal(0, 3, (300, 1000))
    art = (ref + rng.normal(0, 0.3, ref.shape)).astype(np.float32)
    ids = rng.integers(0, 1000, 300).tolist()
    values, indices = torch.topk(torch.from_numpy(ref), 64, dim=-1)

    def run():
        lse = torch.cat([torch.logsumexp(torch.from_numpy(ref)[rows], -1) for rows in
                         reference.row_blocks(*ref.shape)])
        lp = (values - lse[:, None]).numpy().astype(np.float32)
        pos = quality.position_metrics(art, indices.numpy().astype(np.int32), lp, lse.numpy().astype(np.float32))
        return lse.numpy(), pos, reference.perplexity(art, ids)

    monkeypatch.setattr(reference, "BLOCK_BYTES", 8 * 1000 * 7)  # 7 rows a block: 43 blocks, a short last one
    assert len(reference.row_blocks(*ref.shape)) == 43
    blocked = run()
    monkeypatch.setattr(reference, "BLOCK_BYTES", 2**40)
    assert len(reference.row_blocks(*ref.shape)) == 1
    whole = run()
    assert np.array_equal(blocked[0], whole[0]) and np.array_equal(whole[0], torch.logsumexp(
        torch.from_numpy(ref), -1).numpy())
    assert all(np.array_equal(blocked[1][k], whole[1][k]) for k in ("cosine", "top1", "kl"))
    assert blocked[2] == whole[2]

def test_metrics_tell_precisions_apart(measured):
    fp16, int4 = measured["ov-fp16"]["gate"], measured["ov-int4"]["gate"]
    assert fp16["cosine"] >= 0.999 and fp16["top1"] >= 0.98 and fp16["kl"] < 1e-3
    assert abs(fp16["ppl_ratio"] - 1) < 0.01 and fp16["answers_identical"] == 1
    # int4 measurably lower on every metric
    assert int4["cosine"] < fp16["cosine"] - 1e-3
    assert int4["kl"] > 10 * fp16["kl"] and int4["top1"] < fp16["top1"]
    for rec in measured.values():
        for s in rec["sequences"]:
            if s["kind"] == "chat" and s["first_divergence"] is not None:
                tokens = s["divergent_token"]
                assert 0 <= s["first_divergence"] < MAX_NEW and tokens["artifact"] != tokens["reference"]


def test_answers_come_from_the_artifacts_runtime(measured):
    # fp16 never diverges teacher-forced, so its generated answers must be the reference's, word for word.
    chats = [s for s in measured["ov-fp16"]["sequences"] if s["kind"] == "chat"]
    assert chats and all(c["answer"] == c["reference_answer"] for c in chats)
    assert measured["ov-fp16"]["gate"]["similarity"] == pytest.approx(1.0, abs=1e-5)
    for rec in measured.values():
        sims = [s["similarity"] for s in rec["sequences"] if s["kind"] == "chat"]
        assert rec["gate"]["similarity"] == pytest.approx(np.mean(sims))
        for s in rec["sequences"]:
            if s["kind"] == "chat" and s["first_divergence"] is not None:  # greedy: the shared prefix is generated
                assert s["answer"].startswith(s["shared_prefix"]) and s["answer"] != s["reference_answer"]


def test_answer_similarity_scores_meaning():
    same, paraphrase, unrelated = quality.answer_similarity(
        ["The capital of France is Paris."] * 3,
        ["The capital of France is Paris.", "Paris is France's capital city.", "Mix the flour with two eggs."])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > 0.8 and unrelated < 0.3, (paraphrase, unrelated)


def test_gate_names_an_answer_similarity_miss():
    limits = Thresholds(min_similarity=0.9)
    assert misses({"similarity": 0.62}, limits) == ["similarity 0.62 < 0.9"]
    assert misses({"similarity": 0.95}, limits) == []
    assert misses({}, limits) == ["similarity not measured (limit 0.9)"]


def test_gate_fails_naming_the_broken_variant(metrics_root, capsys):
    with pytest.raises(PipelineError) as err:
        report.run(GATE, {"ov-fp16": FP16, "ov-int4": INT4, "ov-broken": FP16}, ALL, metrics_root, metrics_root / "r.json")
    msg = str(err.value)
    assert "\n" not in msg and "tiny/ov-broken: cosine" in msg
    assert "tiny/ov-fp16" not in msg and "tiny/ov-int4" not in msg
    table = capsys.readouterr().out
    assert "tiny/ov-broken" in table and "MISS" in table
    listed = json.loads((metrics_root / "r.json").read_text())["misses"]
    assert listed and all(m in msg for m in listed)


def test_enforce_false_passes_and_still_lists_misses(metrics_root):
    explore = GATE.model_copy(update={"enforce": False})
    table, misses = report.run(explore, {"ov-fp16": FP16, "ov-int4": INT4, "ov-broken": FP16}, ALL, metrics_root,
                               metrics_root / "r.json")
    assert misses and all(m.startswith("tiny/ov-broken: ") for m in misses)
    assert {m.split(": ")[1].split()[0] for m in misses} >= {"cosine", "kl"}
    assert "ungated" not in table


def test_family_without_thresholds_is_ungated(metrics_root):
    variants = {"ov-fp16": FP16, "ov-int4": INT4, "ov-broken": FP16}
    table, misses = report.run(QualityParams(thresholds={}), variants, ALL, metrics_root, metrics_root / "r.json")
    assert misses == [] and table.count("ungated") == 3


def test_variants_no_longer_in_params_are_not_reported(metrics_root):
    table, misses = report.run(GATE, {"ov-fp16": FP16}, {"tiny": ["ov-fp16"]}, metrics_root, metrics_root / "r.json")
    assert misses == [] and "ov-broken" not in table and "ov-fp16" in table


def test_params_are_strict():
    with pytest.raises(ValidationError):
        QualityParams(thresholds={"int4": {"min_cosin": 0.9}})
    with pytest.raises(ValidationError):
        QualityParams(treshold={})


def test_stages_through_the_layout(tiny_model, artifacts, tmp_path, monkeypatch):
    """The thin stage wrappers the CLI calls: reference -> quality -> report under artifacts/ and metrics/."""
    from types import SimpleNamespace

    from pipeline.layout import SOURCE, Layout

    monkeypatch.chdir(ROOT)  # quality.evalset is relative to the project root, as dvc runs it
    layout = Layout(tmp_path)
    shutil.copytree(tiny_model, layout.artifact("tiny", SOURCE))
    shutil.copytree(artifacts["ov-int4"], layout.artifact("tiny", "ov-int4"))
    fsutil.write_manifest(layout.artifact("tiny", "ov-int4"))
    params = SimpleNamespace(quality=GATE.model_copy(update={"long_sequence_tokens": 0}), variants={"ov-int4": INT4},
                             models={"tiny": None}, variants_of=lambda model: ["ov-int4"])
    reference.stage(params, layout, "tiny")
    rec = quality.stage(params, layout, "tiny", "ov-int4")
    assert rec["stage"] == "openvino-quality@tiny-ov-int4" and [s["name"] for s in rec["sequences"]][-1] == "text"
    table, misses = report.stage(params, layout)
    assert misses == [] and "tiny/ov-int4" in table
    assert layout.metrics("tiny", "ov-int4", "quality").is_file() and (tmp_path / report.REPORT).is_file()


def test_thresholds_by_variant_name_win_over_the_family(metrics_root):
    variants = {"ov-fp16": FP16, "ov-int4": INT4, "ov-broken": FP16}
    loose = {"min_cosine": 0.5, "min_top1": 0.0, "max_kl": 100.0, "max_ppl_ratio": 100.0}
    gate = GATE.model_copy(update={"thresholds": {**GATE.thresholds, "ov-broken": Thresholds(**loose)}})
    table, misses = report.run(gate, variants, ALL, metrics_root, metrics_root / "r.json")
    assert misses == []  # the broken artifact now meets the limits set for it by name; fp16 still gates ov-fp16
    assert table.count(" ok") == 3


def test_a_16bit_checkpoint_is_referenced_exactly_at_half_the_memory(tmp_path):
    """A bf16 checkpoint stays bf16 in memory and runs in float64 layer by layer: its reference is the one a float32
    copy of the same weights gives, to the bit, and says how it was made."""
    import torch
    import transformers

    from tests import tiny

    tiny.build("3.5-mini", tmp_path / "bf16")  # longrope, scored past its original context by the long sequence
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=dtype)
        model.save_pretrained(tmp_path / name)
        if name == "f32":
            for f in (tmp_path / "bf16").iterdir():
                if not (tmp_path / name / f.name).exists():
                    shutil.copy(f, tmp_path / name / f.name)
    evalset = reference.EvalSet(prompts=["What is the capital of France?"], text="The sea is calm. " * 5)
    got = {name: reference.run(tmp_path / name, evalset, tmp_path / f"ref-{name}", max_new_tokens=MAX_NEW,
                               top_k=TOP_K, long_sequence_tokens=LONG) for name in ("bf16", "f32")}
    # Weights that do not fit in memory: the later modules' pages go back after each pass, the numbers stay.
    weights = sum(f.stat().st_size for f in (tmp_path / "bf16").glob("*.safetensors"))
    got["streamed"] = reference.run(tmp_path / "bf16", evalset, tmp_path / "ref-streamed", max_new_tokens=MAX_NEW,
                                    top_k=TOP_K, long_sequence_tokens=LONG, memory=weights // 2)
    streamed = got["streamed"].pop("streamed")
    assert re.fullmatch(r"(\d+) of (\d+) modules' weights \(0\.0 GB\) read from the checkpoint again on every pass: "
                        r"0\.0 GB of weights, 0\.0 GB of memory for them", streamed), streamed
    assert 0 < int(streamed.split()[0]) < int(streamed.split()[2])
    for name in ("bf16", "streamed"):
        assert got[name].pop("weights") == "bfloat16 as stored, upcast to float64 per layer when it runs"
    assert got["f32"].pop("weights") == "float32 as stored, upcast to float64 per layer when it runs"
    assert got["bf16"] == got["streamed"] == got["f32"]
    refs = {name: reference.load(tmp_path / f"ref-{name}")[1] for name in ("bf16", "streamed", "f32")}
    assert all(np.array_equal(refs[name][k], refs["f32"][k]) for name in ("bf16", "streamed") for k in refs["f32"])
    assert "streamed" not in json.loads((tmp_path / "ref-streamed" / "reference.json").read_text())


# Other kernels on this CPU stand in for another CPU's: torch's AVX2 code paths instead of AVX-512 ones (aten's
# vectorised ops and oneDNN's GEMMs), read when the process starts.
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
RUN_REFERENCE = """
import sys
from pathlib import Path
from pipeline.stages import reference
evalset = reference.EvalSet(prompts=["What is the capital of France?"], text="The sea is calm today. " * 12)
reference.run(Path(sys.argv[1]), evalset, Path(sys.argv[2]), max_new_tokens=8, top_k=32, long_sequence_tokens=1500)
"""


def test_the_reference_is_the_same_bytes_with_another_cpus_kernels(tmp_path):
    """What makes a rebuild on another CPU vendor reproduce the committed reference: float64 arithmetic (the
    rotary cos/sin and RMS norms included) stored as float32. The long sequence runs past the original context
    (longrope's long factors), where float32 cos/sin of large angles differed between AVX2 and AVX-512 kernels."""
    import os
    import subprocess
    import sys

    import torch

    from tests import tiny

    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "ZVECTOR"):
        pytest.skip(f"this CPU's kernels are already {torch.backends.cpu.get_cpu_capability()}: no other to compare")
    src = tiny.build("3.5-mini", tmp_path / "src")
    outs = {}
    for name, extra in (("host", {}), ("other", OTHER_KERNELS)):
        outs[name] = tmp_path / name
        subprocess.run([sys.executable, "-c", RUN_REFERENCE, str(src), str(outs[name])], check=True,
                       env={**os.environ, **extra}, cwd=ROOT)
    for f in ("logits.npz", "reference.json"):
        assert (outs["host"] / f).read_bytes() == (outs["other"] / f).read_bytes(), f


def test_reference_vocabulary_layers_without_a_float64_copy_of_their_weight(tmp_path, monkeypatch):
    """The tied embedding / output layer run in float64 without the [vocab, hidden] float64 copy (4.9 GB at
    Phi-4-mini): in one block the logits are the whole copy's bit for bit; in many, float64 GEMM may round the last
    bit otherwise, and what the reference stores (float32) is the same."""
    import torch

    from tests import tiny

    src = tiny.build("phi4-mini", tmp_path / "src")  # tied, like SmolLM2 and Phi-4-mini
    ids = torch.tensor([list(range(8, 200))])

    def logits(blocks: bool, block_bytes: int):
        monkeypatch.setattr(reference, "BLOCK_BYTES", block_bytes)
        if not blocks:
            monkeypatch.setattr(reference, "_vocabulary_in_blocks", lambda model: [])
        model, *_ = reference._load(src, None)
        monkeypatch.undo()
        with torch.no_grad():
            return model(ids).logits[0], model

    whole, _ = logits(False, 2**28)
    one, model = logits(True, 2**28)
    many, _ = logits(True, 8 * 64 * 7)  # 7 vocabulary rows a block
    assert not any(p.dtype == torch.float64 for p in model.parameters())  # nothing left widened after a pass
    assert whole.dtype == torch.float64 and torch.equal(one, whole)
    assert torch.equal(many.to(torch.float32), whole.to(torch.float32))
