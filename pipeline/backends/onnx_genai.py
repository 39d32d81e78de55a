"""ONNX Runtime GenAI route: onnxruntime-genai's model builder turns the checkpoint into an ONNX model with its
genai_config.json and tokenizer files; onnxruntime-genai runs it.

Every export is read back (operators, MatMulNBits attributes, initializer dtypes, what the LM head reads) and
fails if the graph is not the precision the variant promises. A variant for an execution provider this machine
lacks (DirectML on Linux) still runs: on the CPU execution provider, and the record says so.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.backends.common import chat_text, concluded, one_line, tokenizer_parity, versions
from pipeline.errors import PipelineError
from pipeline.params import OnnxGenaiVariant, Prompt, SmokeParams

MODEL_ONNX = "model.onnx"
BUILDER_CACHE = ".builder-cache"  # inside the staging dir, removed before the caller renames it into place
# Execution providers other than CPU: the name a user knows, and onnxruntime-genai's probe for it in this build.
PROVIDERS = {
    "dml": ("DirectML", "is_dml_available"),
    "cuda": ("CUDA", "is_cuda_available"),
    "webgpu": ("WebGPU", "is_webgpu_available"),
}
FLOAT_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}


# ---- export --------------------------------------------------------------------------------------------------


def builder_options(variant: OnnxGenaiVariant) -> dict[str, str]:
    """The builder's --extra_options for a variant.

    The key names are the ones onnxruntime-genai 0.18 reads (QuantConfig.from_extra_options in
    onnxruntime_genai/models/quantization/quant_config.py). Its --help still lists `int4_`-prefixed aliases
    (int4_block_size, int4_accuracy_level), but nothing reads them: they are silently ignored (checked: block 32).
    """
    options = {"hf_token": "false"}  # a local checkpoint: never look up a hub token
    if variant.precision in ("int4", "int8"):
        options["block_size"] = str(variant.block_size)
        options["is_symmetric"] = str(variant.is_symmetric).lower()
        if variant.accuracy_level is not None:
            options["accuracy_level"] = str(variant.accuracy_level)
    return options


def export(source: Path, variant: OnnxGenaiVariant, out: Path, *, ir_fp16: Path | None = None) -> dict:
    """Run the model builder into `out` (an empty staging dir) and read the graph back. `ir_fp16` is not used:
    this route builds from the checkpoint itself."""
    source, out = Path(source), Path(out)
    if not (source / "config.json").is_file():
        raise PipelineError(f"{source}: no config.json; the ONNX Runtime GenAI builder needs a checkpoint directory")
    options = builder_options(variant)
    start = time.perf_counter()
    try:
        _run_builder(source, variant, out, options)
    finally:
        shutil.rmtree(out / BUILDER_CACHE, ignore_errors=True)
    seconds = round(time.perf_counter() - start, 2)
    graph = read_back(out)
    check_graph(graph, variant)
    return {
        "variant": variant.model_dump(),
        "method": f"onnxruntime-genai model builder -p {variant.precision} -e {variant.execution_provider}",
        "extra_options": options,
        "seconds": seconds,
        "graph": graph,
        "files": {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()},
        "versions": versions("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "transformers", "torch"),
    }


def _run_builder(source: Path, variant: OnnxGenaiVariant, out: Path, options: dict[str, str]) -> None:
    # In process, through the same two calls its CLI makes (`python -m onnxruntime_genai.models.builder` runs
    # parse_extra_options, then create_model): the files are byte-identical to the CLI's, an export does not pay
    # the builder's ~6 s torch/transformers import again in a subprocess, and a failure arrives as an exception
    # rather than as stderr text. The CLI's --help cannot be used anyway (it crashes on a literal % in its text).
    from onnxruntime_genai.models import builder

    # The quantizer logs two INFO lines per MatMul (and calls logging.basicConfig when imported); the builder's
    # own "Reading layer N" lines on stdout are progress enough.
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    args = (None, str(source), str(out), variant.precision, variant.execution_provider, str(out / BUILDER_CACHE))
    try:
        with _git_hidden():
            extra = builder.parse_extra_options(*args, [f"{k}={v}" for k, v in options.items()])
            builder.create_model(*args, **extra)
    except Exception as e:
        raise PipelineError(
            f"onnxruntime-genai builder failed on {source} ({variant.precision}, {variant.execution_provider}): "
            f"{one_line(e)}"
        ) from e


@contextlib.contextmanager
def _git_hidden() -> Iterator[None]:
    # The builder stamps model.onnx's producer_version with `git rev-parse HEAD`, run five directories above its
    # own source (Model.get_genai_commit in builders/base.py). With the venv inside this project's checkout that
    # is *our* commit, so model.onnx would change with every commit here. With no git repository to find, it
    # falls back to the wheel's own commit (onnxruntime_genai.__commit__).
    saved = os.environ.get("GIT_DIR")
    os.environ["GIT_DIR"] = os.devnull
    try:
        yield
    finally:
        if saved is None:
            del os.environ["GIT_DIR"]
        else:
            os.environ["GIT_DIR"] = saved


def read_back(artifact: Path) -> dict:
    """What the exported graph holds: operator counts, MatMulNBits attributes, initializer dtypes, the LM head."""
    import onnx

    model = onnx.load(str(Path(artifact) / MODEL_ONNX), load_external_data=False)  # weights stay on disk
    graph = model.graph
    initializers = {t.name: onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer}
    nbits = [
        {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        | {"zero_points": len(node.input) > 3 and bool(node.input[3])}
        for node in graph.node
        if node.op_type == "MatMulNBits"
    ]
    producers = {name: node for node in graph.node for name in node.output}
    head = producers["logits"]
    feed = producers.get(head.input[0])
    return {
        "producer": f"{model.producer_name} {model.producer_version}",
        "ops": dict(sorted(Counter(node.op_type for node in graph.node).items())),
        "initializer_dtypes": dict(sorted(Counter(initializers.values()).items())),
        "matmulnbits": {
            "count": len(nbits),
            "bits": sorted({n["bits"] for n in nbits}),
            "block_size": sorted({n["block_size"] for n in nbits}),
            # The attribute is left out where it is 0, the builder's default for non-CPU providers.
            "accuracy_level": sorted({n.get("accuracy_level", 0) for n in nbits}),
            "asymmetric": sum(n["zero_points"] for n in nbits),
        },
        # MatMuls that multiply by a stored weight in floating point, i.e. were not quantized.
        "float_matmul_weights": sum(1 for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers),
        "lm_head": {"op": head.op_type, "name": head.name, "reads": feed.name if feed else head.input[0]},
    }


def check_graph(graph: dict, variant: OnnxGenaiVariant) -> None:
    """Fail in one line if the read-back graph is not what the variant promises."""
    nbits = graph["matmulnbits"]
    floats = {dtype for dtype in graph["initializer_dtypes"] if dtype in FLOAT_TYPES}
    wanted = f"{variant.precision} variant"
    # The builder takes any Linear with out_features == vocab_size for the LM head (Model.has_lm_head): with
    # intermediate_size == vocab_size that is the MLP's gate/up projection it unpacked, and the logits are then
    # computed from layer 0. The real head reads the final norm.
    if "final_norm" not in graph["lm_head"]["reads"]:
        raise PipelineError(
            f"{MODEL_ONNX}: the LM head ({graph['lm_head']['name']}) reads {graph['lm_head']['reads']!r}, not the "
            "final norm; the builder took another Linear for the LM head (does intermediate_size equal vocab_size?)"
        )
    if variant.precision in ("int4", "int8"):
        bits = 4 if variant.precision == "int4" else 8
        if nbits["count"] == 0:
            raise PipelineError(
                f"{wanted}, but {MODEL_ONNX} has no MatMulNBits (weights {', '.join(sorted(floats))}): not quantized"
            )
        if nbits["bits"] != [bits]:
            raise PipelineError(f"{wanted}, but {MODEL_ONNX}'s MatMulNBits have bits={nbits['bits']}")
        if nbits["block_size"] != [variant.block_size]:
            raise PipelineError(
                f"{wanted} with block_size {variant.block_size}, but {MODEL_ONNX} has block_size={nbits['block_size']}"
            )
        if variant.accuracy_level is not None and nbits["accuracy_level"] != [variant.accuracy_level]:
            raise PipelineError(
                f"{wanted} with accuracy_level {variant.accuracy_level}, "
                f"but {MODEL_ONNX} has accuracy_level={nbits['accuracy_level']}"
            )
        if nbits["asymmetric"] != (0 if variant.is_symmetric else nbits["count"]):
            raise PipelineError(
                f"{wanted} with is_symmetric {variant.is_symmetric}, but {nbits['asymmetric']} of "
                f"{nbits['count']} MatMulNBits in {MODEL_ONNX} carry zero points"
            )
        if graph["float_matmul_weights"]:
            raise PipelineError(
                f"{wanted}, but {graph['float_matmul_weights']} MatMul weights in {MODEL_ONNX} stayed float"
            )
    else:
        dtype = {"fp16": "FLOAT16", "fp32": "FLOAT"}[variant.precision]
        if nbits["count"]:
            raise PipelineError(f"{wanted}, but {MODEL_ONNX} has {nbits['count']} quantized MatMulNBits")
        if floats != {dtype}:
            raise PipelineError(f"{wanted}, but {MODEL_ONNX}'s float initializers are {', '.join(sorted(floats))}")


# ---- running it ----------------------------------------------------------------------------------------------


def _load(artifact: Path, variant: OnnxGenaiVariant):
    """The model on the variant's execution provider if this machine has it, else on the CPU provider; and the
    record of that choice."""
    import onnxruntime_genai as og

    config = og.Config(str(artifact))
    run = {"requested": variant.execution_provider, "device": None, "fallback": None}
    if variant.execution_provider != "cpu":
        name, probe = PROVIDERS[variant.execution_provider]
        if not getattr(og, probe)():
            # The builder wrote this provider into genai_config.json, and the model does not load without it.
            # Cleared, the session gets the CPU provider, which has kernels for the int4/fp16 graphs built for
            # DML (DESIGN.md; fp32-dml does not load). Windows-only wheels carry DirectML (onnxruntime-genai-directml).
            config.clear_providers()
            run["fallback"] = f"{name} unavailable on {platform.system()}: CPU execution provider"
    model = og.Model(config)
    run["device"] = model.device_type
    return model, run


def smoke(artifact: Path, variant: OnnxGenaiVariant, smoke: SmokeParams, source: Path) -> dict:
    """Generate greedily for each chat prompt with onnxruntime-genai and check its tokenizer against the source's.
    Never raises for a failed run: the failure becomes the record's reason."""
    record = {
        "status": "failed",
        "reason": None,
        "tokenizer_parity": None,
        "runs": [],
        "versions": versions("onnxruntime-genai", "onnxruntime"),
    }
    try:
        import onnxruntime_genai as og

        model, run = _load(Path(artifact), variant)
        record["runs"].append(run)
        # GenAI's decode drops special tokens by default; parity needs them back to reproduce the chat text.
        # Its encode never adds BOS, like the source ids taken without special tokens.
        full = og.Tokenizer(model)
        full.update_options(skip_special_tokens="false")
        record["tokenizer_parity"] = tokenizer_parity(source, [p.text for p in smoke.prompts], full.encode, full.decode)
        tokenizer = og.Tokenizer(model)
        run["prompts"] = [_generate(model, tokenizer, source, p, smoke.max_new_tokens) for p in smoke.prompts]
    except Exception as e:
        return concluded(record, e)
    return concluded(record)


def _generate(model, tokenizer, source: Path, prompt: Prompt, max_new_tokens: int) -> dict:
    ids = tokenizer.encode(chat_text(source, prompt.text))
    new, start, first = _greedy(model, ids, max_new_tokens)
    end = time.perf_counter()
    answer = new[:-1] if new and new[-1] in set(tokenizer.eos_token_ids) else new
    text = tokenizer.decode(np.asarray(answer, dtype=np.int32))
    return {
        "prompt": prompt.text,
        "text": text,
        "new_tokens": len(answer),
        "ttft_ms": round((first - start) * 1000, 2) if first else None,
        # Decode speed: the tokens after the first, over the time after the first.
        "tokens_per_s": round((len(new) - 1) / (end - first), 2) if len(new) > 1 else None,
        "expect": prompt.expect,
        "contains_expect": None if prompt.expect is None else prompt.expect in text,
    }


def _greedy(model, ids, max_new_tokens: int) -> tuple[list[int], float, float | None]:
    """The new ids; when the prompt went in and when the first new id came out (perf_counter)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    # Greedy, whatever genai_config.json's search section says; stops early at the eos ids stored there.
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    new: list[int] = []
    first = None
    while not generator.is_done():
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
        first = first or time.perf_counter()
    return new, start, first


def generate(artifact: Path, variant: OnnxGenaiVariant, prompts: Sequence[Sequence[int]], max_new_tokens: int
             ) -> list[list[int]]:
    """Greedy new ids for each tokenized prompt, from onnxruntime-genai on the provider logits() uses."""
    onnx = Path(artifact) / MODEL_ONNX
    model = _model_for_logits(Path(artifact), variant, onnx.stat().st_mtime_ns)
    return [_greedy(model, ids, max_new_tokens)[0] for ids in prompts]


@functools.lru_cache(maxsize=1)
def _model_for_logits(artifact: Path, variant: OnnxGenaiVariant, mtime_ns: int):
    """Loaded once per process for the quality stage's several logits() and generate() calls (mtime in the key: a model rewritten
    in place is reloaded)."""
    return _load(artifact, variant)[0]


def logits(artifact: Path, variant: OnnxGenaiVariant, input_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab], float32, from onnxruntime-genai on the same provider the
    smoke run uses."""
    import onnxruntime_genai as og

    onnx = Path(artifact) / MODEL_ONNX
    model = _model_for_logits(Path(artifact), variant, onnx.stat().st_mtime_ns)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(input_ids))
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(input_ids, dtype=np.int32))
    # After append_tokens the prompt pass's "logits" output holds every position ([1, len, vocab]), not just the
    # last: teacher forcing goes through genai itself, with no separate InferenceSession on model.onnx. (A model
    # built with prune_lm_head=true would give only the last position; the builder options above never set it.)
    out = np.asarray(generator.get_output("logits"))[0].astype(np.float32)
    if out.shape[0] != len(input_ids):
        raise PipelineError(f"{artifact}: genai returned logits for {out.shape[0]} of {len(input_ids)} positions")
    return out
