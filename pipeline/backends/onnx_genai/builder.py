"""ONNX Runtime GenAI export: onnxruntime-genai's model builder turns the checkpoint into an ONNX model with its
genai_config.json and tokenizer files. Every export is read back (readback.py) and fails if the graph is not the
precision the variant promises."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.common import files_record, one_line, versions
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.backends.onnx_genai.readback import check_graph, read_back
from pipeline.errors import PipelineError
from pipeline.record import Phases
from pipeline.weights import load_causal_lm

if TYPE_CHECKING:
    from pipeline.params import SmokeParams

BUILDER_CACHE = ".builder-cache"  # inside the staging dir, removed before the caller renames it into place


def builder_options(variant: OnnxGenaiVariant) -> dict[str, str]:
    """The builder's --extra_options for a variant.

    The key names are the ones onnxruntime-genai 0.18 reads (QuantConfig.from_extra_options in
    onnxruntime_genai/models/quantization/quant_config.py). Its --help still lists `int4_`-prefixed aliases
    (int4_block_size, int4_accuracy_level), but nothing reads them: they are silently ignored (checked: block 32).
    """
    # hf_token: a local checkpoint, never look up a hub token. windowed_kv_cache: for a sliding-window model (Phi-3
    # mini-4k and medium: 2047) on the CPU EP the 0.18 builder marks every attention layer's KV cache window-sized
    # (GQA sliding_window_cache=1) but lists none of them in genai_config's sliding_window.layers; onnxruntime-genai
    # then sizes one 2063-position cache and any sequence past it fails in GroupQueryAttention ("total_sequence_length
    # must ... be no greater than past_sequence_length for a static cache"), a chat of 2064 tokens included. With the
    # full-length cache the window is still applied (local_window_size) and long sequences run. No effect on models
    # without a sliding window or on other EPs.
    options = {"hf_token": "false", "windowed_kv_cache": "false"}
    if variant.precision in ("int4", "int8"):
        options["block_size"] = str(variant.block_size)
        options["is_symmetric"] = str(variant.is_symmetric).lower()
        if variant.accuracy_level is not None:
            options["accuracy_level"] = str(variant.accuracy_level)
        if variant.algo_config is not None:
            options["algo_config"] = variant.algo_config
    return options


def export(source: Path, variant: OnnxGenaiVariant, out: Path, *, ir_fp16: Path | None, smoke: SmokeParams) -> dict:
    """Run the model builder into `out` (an empty staging dir) and read the graph back. `ir_fp16` and `smoke` are
    not used: this route builds from the checkpoint itself."""
    source, out = Path(source), Path(out)
    if not (source / "config.json").is_file():
        raise PipelineError(f"{source}: no config.json; the ONNX Runtime GenAI builder needs a checkpoint directory")
    options = builder_options(variant)
    start = time.perf_counter()
    phases = Phases("builder")
    try:
        translated = _run_builder(source, variant, out, options, phases)
    finally:
        shutil.rmtree(out / BUILDER_CACHE, ignore_errors=True)
    seconds = round(time.perf_counter() - start, 2)
    with phases("read back"):
        graph = read_back(out)
        check_graph(graph, variant)
    record = {
        "variant": variant.model_dump(),
        "method": f"onnxruntime-genai model builder -p {variant.precision} -e {variant.execution_provider}",
        "extra_options": options,
        "seconds": seconds,
        "phases": phases.seconds,
        "graph": graph,
        "files": files_record(out),
        "versions": versions("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "transformers", "torch"),
    }
    if translated:  # only then: the records of legacy-config exports keep their bytes
        record["config_translated"] = translated
    return record


def _run_builder(source: Path, variant: OnnxGenaiVariant, out: Path, options: dict[str, str],
                 phases: Phases) -> str | None:
    # In process, through the same two calls its CLI makes (`python -m onnxruntime_genai.models.builder` runs
    # parse_extra_options, then create_model): the files are byte-identical to the CLI's, an export does not pay
    # the builder's ~6 s torch/transformers import again in a subprocess, and a failure arrives as an exception
    # rather than as stderr text. The CLI's --help cannot be used anyway (it crashes on a literal % in its text).
    with phases("import"):
        from onnxruntime_genai.models import builder

    # The quantizer logs two INFO lines per MatMul (and calls logging.basicConfig when imported); the builder's
    # own "Reading layer N" lines on stdout are progress enough.
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    args = (None, str(source), str(out), variant.precision, variant.execution_provider, str(out / BUILDER_CACHE))
    try:
        with _git_hidden():
            extra = builder.parse_extra_options(*args, [f"{k}={v}" for k, v in options.items()])
            # parse_extra_options loaded the config (AutoConfig); create_model reads rope settings from that object.
            translated = _legacy_rope(extra["hf_details"]["hf_config"], source)
            with _within_memory(source, phases, quantized=variant.precision in ("int4", "int8")), \
                    phases("create_model in all (the steps above included)"):
                builder.create_model(*args, **extra)
    except PipelineError:
        raise
    except Exception as e:
        raise PipelineError(
            f"onnxruntime-genai builder failed on {source} ({variant.precision}, {variant.execution_provider}): "
            f"{one_line(e)}"
        ) from e
    return translated


def _legacy_rope(config, source: Path) -> str | None:
    """Add to a longrope config (as transformers loaded it) the key the builder needs; return what was added.

    The builder (0.18, builders/phi.py) picks longrope by rope_parameters["rope_type"] but reads its mscale policy
    from the legacy rope_scaling key "type", which transformers 5 keeps when it loads a legacy config and never
    writes itself: KeyError 'type'. The rest it reads (factors, rope_theta, partial_rotary_factor, original and max
    positions) transformers 5 resolves alike from either format.
    """
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or rope.get("rope_type") != "longrope":
        return None
    where = f"{source}/config.json: rope_parameters"
    if not all(isinstance(rope.get(k), list) for k in ("short_factor", "long_factor")):
        raise PipelineError(f"{where} is longrope without short_factor and long_factor lists; the onnxruntime-genai "
                            "builder needs both")
    # The builder scales cos/sin by its own sqrt(1 + ln(s) / ln(original)), s = max / original positions, and never
    # reads factor or attention_factor (both newer transformers keys): torch would scale differently.
    original = config.original_max_position_embeddings

    def scale(s: float) -> float:
        return 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(original))

    ours = scale(config.max_position_embeddings / original)
    theirs = rope.get("attention_factor") or scale(rope.get("factor") or config.max_position_embeddings / original)
    if not math.isclose(theirs, ours, rel_tol=1e-6):
        raise PipelineError(f"{where} factor/attention_factor give attention scale {theirs:.6g}, but the "
                            f"onnxruntime-genai builder's longrope always uses {ours:.6g} (from max / original "
                            "positions): the ONNX graph would not match the checkpoint")
    if "type" in rope:
        return None
    rope["type"] = "longrope"
    return "rope_parameters['rope_type'] -> rope_scaling['type']"


@contextlib.contextmanager
def _within_memory(source: Path, phases: Phases, quantized: bool) -> Iterator[None]:
    """Two changes to how the builder (0.18) holds a model, neither to what it writes (tested byte for byte).

    - Its checkpoint load (Model.load_weights: a plain from_pretrained) makes a float32 copy of a bf16 checkpoint
      while the shards are mapped. Here the checkpoint is read as stored (pipeline/weights.py): the builder casts
      every initializer to its own io dtype when it writes it, and bf16 -> float32 is exact.
    - Before quantizing (Model.to_nbits) it turns the whole graph into one in-memory ModelProto, every MatMul weight
      materialised in float32 while the torch model is still loaded. Here the float graph is first saved to the
      builder's cache dir one tensor at a time (ir.save) and loaded back with its weights left on disk; the torch
      model is dropped and the builder's own save_model (its to_nbits, MatMulNBitsQuantizer) runs on that, reading
      each weight when it gets to it (onnx's to_array resolves external data from the working directory: chdir).
    Phi-3-mini ort-cpu-int4: 23.9 GB peak before (3.1x its BF16 weights); README, "At real size", has the after.
    """
    import gc
    import sys

    import onnx_ir as ir

    base = sys.modules["builders.base"]  # the builder imports its package as top-level `builders`
    load_weights, save_model = base.Model.load_weights, base.Model.save_model

    def as_stored(self, input_path):
        with phases("load the checkpoint"):
            model, _info = load_causal_lm(source, None, label="builder")
        return model

    def from_disk(self, out_dir):
        spill, out_dir = Path(self.cache_dir).absolute() / "float-graph", os.path.abspath(out_dir)  # chdir below
        spill.mkdir(parents=True, exist_ok=True)
        print(f"builder: the float graph goes to {spill}, to be quantized from disk", file=sys.stderr)
        with phases("save the float graph"):
            ir.save(self.model, spill / "model.onnx", external_data="model.onnx.data", size_threshold_bytes=0)
        # Every reference to the torch tensors: the weights, and the graph and its values (their initializers are
        # lazy casts of those tensors).
        self.model = self.graph = self.weights = None
        self.values = {}
        gc.collect()
        self.model = ir.load(spill / "model.onnx")
        self.graph = self.model.graph
        with contextlib.chdir(spill), phases("quantize and save (the builder's save_model)"):
            save_model(self, out_dir)

    base.Model.load_weights = as_stored
    if quantized:
        base.Model.save_model = from_disk
    try:
        yield
    finally:
        base.Model.load_weights, base.Model.save_model = load_weights, save_model


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
