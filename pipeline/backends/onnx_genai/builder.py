"""ONNX Runtime GenAI export: onnxruntime-genai's model builder turns the checkpoint into an ONNX model with its
genai_config.json and tokenizer files. Every export is read back (readback.py) and fails if the graph is not the
precision the variant promises."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.backends.common import files_record, one_line, versions
from pipeline.backends.onnx_genai import KV_SCALES, kvcache
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.backends.onnx_genai.readback import check_graph, read_back
from pipeline.errors import PipelineError
from pipeline.record import Phases
from pipeline.weights import load_causal_lm, page_out

if TYPE_CHECKING:
    import numpy as np

    from pipeline.params import SmokeParams

BUILDER_CACHE = ".builder-cache"  # inside the staging dir, removed before the caller renames it into place
STAND_IN = "aipc-stand-in:"  # the external-data location of a weight that _within_memory reads when asked


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
    # full-length cache long sequences run; the builder applies no window to Phi-3's attention either way (its
    # graphs attend to every past token, where transformers keeps the 2047-token window: DESIGN.md). No effect on
    # models without a sliding window or on other EPs.
    options = {"hf_token": "false", "windowed_kv_cache": "false"}
    if variant.precision in ("int4", "int8"):
        options["block_size"] = str(variant.block_size)
        options["is_symmetric"] = str(variant.is_symmetric).lower()
        if variant.accuracy_level is not None:
            options["accuracy_level"] = str(variant.accuracy_level)
        if variant.algo_config is not None:
            options["algo_config"] = variant.algo_config
    if variant.kv_cache_quant_scheme is not None:
        # The file's name, as the artifact ships it (kvcache.py writes it there before the builder runs).
        options["kv_cache_quant_scheme"] = variant.kv_cache_quant_scheme
        options["kv_cache_scale_file"] = KV_SCALES
    return options


def export(source: Path, variant: OnnxGenaiVariant, out: Path, *, inputs: dict[str, Path], smoke: SmokeParams) -> dict:
    """Run the model builder into `out` (an empty staging dir) and read the graph back. `inputs` (none) and `smoke`
    are not used: this route builds from the checkpoint itself."""
    source, out = Path(source), Path(out)
    if not (source / "config.json").is_file():
        raise PipelineError(f"{source}: no config.json; the ONNX Runtime GenAI builder needs a checkpoint directory")
    _require_gqa_rotary(source)
    options = builder_options(variant)
    start = time.perf_counter()
    phases = Phases("builder")
    calibrated = None
    if variant.kv_cache_quant_scheme is not None:
        with phases("calibrate the KV cache"):
            calibrated = kvcache.calibrate(source, variant, out / KV_SCALES)
    try:
        translated = _run_builder(source, variant, out, options, phases)
    finally:
        shutil.rmtree(out / BUILDER_CACHE, ignore_errors=True)
    shared = _share_quantized_cache(out, variant)
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
    if calibrated:
        record["kv_cache_calibration"] = calibrated
    if shared:
        record["genai_config_changed"] = shared
    return record


def _share_quantized_cache(out: Path, variant: OnnxGenaiVariant) -> dict | None:
    """genai_config.json's past_present_share_buffer back to true for an int8 cache on the CPU provider; what changed.

    The builder (0.18) turns buffer sharing off for every quantized cache but CUDA's, so each decode step copies
    the whole cache into a new present buffer. On the CPU provider (onnxruntime 1.32) the shared buffer gives the
    same logits, bit for bit (default model, 300 greedy steps after a 700-token prompt: max difference 0.0; a test
    holds it), and decodes faster: 174 against 134 tokens/s at 128 tokens of context, 81 against 56 at 2,048."""
    if variant.kv_cache_quant_scheme is None or variant.execution_provider != "cpu":
        return None
    path = out / "genai_config.json"
    config = json.loads(path.read_text())
    if config["search"].get("past_present_share_buffer") is not False:
        return None
    config["search"]["past_present_share_buffer"] = True
    path.write_text(json.dumps(config, indent=4))  # the builder's own layout: 4 spaces, no final newline
    return {"search.past_present_share_buffer": [False, True]}


def _require_gqa_rotary(source: Path) -> None:
    """The builder's attention is onnxruntime's GroupQueryAttention, whose rotary cache must be a multiple of 8 wide
    (half the rotary dimensions): a model with partial rotary (Phi-4-mini: 128 x 0.75 = 96, cache 48) outside that
    builds, then fails on its first run ("cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8")."""
    config = json.loads((source / "config.json").read_text())
    heads = config["num_attention_heads"]
    head = config.get("head_dim") or config["hidden_size"] // heads
    factor = config.get("partial_rotary_factor", 1.0)
    cache = int(head * factor) // 2
    if cache % 8:
        raise PipelineError(f"{source / 'config.json'}: rotary width {int(head * factor)} (head {head} x "
                            f"partial_rotary_factor {factor}) gives GroupQueryAttention a cos/sin cache {cache} wide, "
                            "which onnxruntime refuses at run time (it must be a multiple of 8)")


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
    if "kv_cache_scale_file" in options:  # recorded as the file's name in the artifact; the builder opens a path
        options = {**options, "kv_cache_scale_file": str(out / options["kv_cache_scale_file"])}
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
    - To quantize (Model.to_nbits) it turns the whole graph into one in-memory ModelProto, every weight materialised
      in float32 (Phi-3-medium: 56 GB). Here each initializer goes into that proto as a stand-in, an external-data
      reference to nothing, and when the quantizer reads a stand-in (onnx_ir.from_proto in its default algorithm,
      onnx.numpy_helper.to_array in rtn/k_quant) it gets the builder's own lazy float32 cast of that one weight,
      after which the checkpoint pages it touched are handed back (weights.page_out). A stand-in the quantizer left
      alone becomes the lazy tensor again before the builder saves. (The previous form saved the float graph to
      disk and quantized it from there: twice the checkpoint's bytes on disk, and all of it resident.)
    - When it saves (onnx_ir.save, every precision), a large weight is written a block of rows at a time
      (InRowBlocks) and the checkpoint pages read so far are handed back before each weight: the fp16 export held
      the whole mapped checkpoint plus two f16 copies of the transposed tied lm_head (Phi-4-mini ort-dml-fp16
      10.8 GB, 1.41x its FP16 bytes).
    Phi-3-mini ort-cpu-int4: 23.9 GB peak before either (3.1x its BF16 weights); README, "At real size", has now.
    """
    import numpy as np
    import onnx
    import onnx_ir as ir

    base = sys.modules["builders.base"]  # the builder imports its package as top-level `builders`
    load_weights, to_nbits = base.Model.load_weights, base.Model.to_nbits
    from_proto, to_array, save = ir.from_proto, onnx.numpy_helper.to_array, ir.save
    lazy: dict[str, ir.TensorProtocol] = {}
    reads = [0]

    def as_stored(self, input_path):
        with phases("load the checkpoint"):
            model, _info = load_causal_lm(source, None, label="builder")
        return model

    def stand_in(name: str, tensor) -> ir.ExternalTensor:
        return ir.ExternalTensor(f"{STAND_IN}{name}", 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=name)

    def is_stand_in(proto) -> bool:
        return (isinstance(proto, onnx.TensorProto) and proto.data_location == onnx.TensorProto.EXTERNAL
                and any(e.key == "location" and e.value.startswith(STAND_IN) for e in proto.external_data))

    def read(proto):
        # C order, as the proto's raw bytes would give it: the lazy tensor of a transposed torch weight is a strided
        # view, and the quantizer's kernel reads the buffer as if it were not.
        cast = _cast_of(lazy[proto.name])
        array = _in_row_blocks(*cast) if cast else np.ascontiguousarray(lazy[proto.name].numpy())
        page_out(source)
        reads[0] += 1
        if reads[0] % 25 == 0:
            print(f"builder: {reads[0]} weights quantized", file=sys.stderr, flush=True)
        return array

    def from_stand_ins(self):
        for name, value in self.model.graph.initializers.items():
            lazy[name], value.const_value = value.const_value, stand_in(name, value.const_value)
        with phases("quantize"):
            model = to_nbits(self)
        for name, value in model.graph.initializers.items():
            if isinstance(value.const_value, ir.ExternalTensor) and str(value.const_value.location).startswith(
                    STAND_IN):
                value.const_value = lazy[name]
        return model

    class InRowBlocks(ir.LazyTensor):
        """The builder's lazy cast, written to the file a block of rows at a time (C order, as tobytes gives)."""

        def tofile(self, file) -> None:
            for block in _row_blocks(*_cast_of(self)):
                file.write(block)

    def streamed(model, *args, callback=None, **kwargs):
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.LazyTensor) and _cast_of(tensor):
                value.const_value = InRowBlocks(tensor.raw, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)

        def paging_out(tensor, info):
            page_out(source)
            if callback:
                callback(tensor, info)

        return save(model, *args, callback=paging_out, **kwargs)

    base.Model.load_weights = as_stored
    ir.save = streamed
    if quantized:
        base.Model.to_nbits = from_stand_ins
        ir.from_proto = lambda proto: ir.Tensor(read(proto), name=proto.name) if is_stand_in(proto) \
            else from_proto(proto)
        onnx.numpy_helper.to_array = lambda proto, base_dir="": read(proto) if is_stand_in(proto) \
            else to_array(proto, base_dir)
    try:
        yield
    finally:
        base.Model.load_weights, base.Model.to_nbits = load_weights, to_nbits
        ir.from_proto, onnx.numpy_helper.to_array, ir.save = from_proto, to_array, save


# A weight above this many bytes (in the type it is cast to) is cast and laid out a block of rows at a time.
CAST_BLOCK = 1 << 28


def _cast_of(lazy) -> tuple | None:
    """(torch weight, target dtype) of the builder's lazy cast of a large 2-D weight to float16 / float32 (its
    make_initializer closure, builders/base.py: tensor, torch_dtype), else None. Whole, the cast keeps a transposed
    view's strides and the C-order copy the file or the quantizer needs comes beside it: twice the weight, 4.9 GB in
    float32 for Phi-4-mini's tied [200064, 3072] lm_head (its ort-cpu-int4 export 1.32x its FP16 bytes)."""
    import torch

    func = getattr(lazy, "_func", None)  # onnx_ir's LazyTensor keeps it there
    cells = dict(zip(func.__code__.co_freevars, (c.cell_contents for c in func.__closure__ or ()))) \
        if hasattr(func, "__code__") else {}
    source, dtype = cells.get("tensor"), cells.get("torch_dtype")
    if not isinstance(source, torch.Tensor) or dtype not in (torch.float16, torch.float32) or source.ndim != 2 \
            or source.numel() * dtype.itemsize <= CAST_BLOCK:
        return None
    return source, dtype


def _row_blocks(source, dtype) -> Iterator[np.ndarray]:
    """`source` cast to `dtype`, in C order, CAST_BLOCK bytes of rows at a time: the same values (bf16 and f16
    widen exactly; a cast is elementwise)."""
    step = max(1, CAST_BLOCK // (dtype.itemsize * source.shape[1]))
    for i in range(0, source.shape[0], step):
        yield source[i:i + step].to(dtype).contiguous().numpy()


def _in_row_blocks(source, dtype) -> np.ndarray:
    """The whole C-order array, filled from _row_blocks: one copy of the weight in `dtype`, not two."""
    import numpy as np

    out = np.empty(tuple(source.shape), dtype=source[:0].to(dtype).numpy().dtype)
    i = 0
    for block in _row_blocks(source, dtype):
        out[i:i + len(block)] = block
        i += len(block)
    return out


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
