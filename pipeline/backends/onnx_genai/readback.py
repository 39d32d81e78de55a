"""Reading an exported ONNX graph back: operators, MatMulNBits attributes, initializer dtypes and what the LM head
reads; and the check that it is what the variant promises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
from pipeline.errors import PipelineError

MODEL_ONNX = "model.onnx"
FLOAT_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}


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
    head_bits = next((onnx.helper.get_attribute_value(a) for a in head.attribute if a.name == "bits"), None)
    feed = producers.get(head.input[0])
    cache = {onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in graph.input
             if i.name.startswith("past_key_values")}
    quantized = sorted({onnx.helper.get_attribute_value(a).decode() for node in graph.node
                        if node.op_type == "GroupQueryAttention" for a in node.attribute
                        if a.name in ("k_quant_type", "v_quant_type")})
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
            # Only where bits are mixed (algo_config *_last / *_mixed): single-width records keep their bytes.
            **({"int8": sum(n["bits"] == 8 for n in nbits), "lm_head_bits": head_bits}
               if len({n["bits"] for n in nbits}) > 1 else {}),
        },
        # MatMuls that multiply by a stored weight in floating point, i.e. were not quantized.
        "float_matmul_weights": sum(1 for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers),
        "lm_head": {"op": head.op_type, "name": head.name, "reads": feed.name if feed else head.input[0]},
        # Only where the cache is quantized: the records of float-cache exports keep their bytes.
        **({"kv_cache": {"dtype": sorted(cache), "quant_type": quantized}} if quantized else {}),
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
    kv = graph.get("kv_cache")
    scheme = variant.kv_cache_quant_scheme
    if scheme and kv != {"dtype": ["INT8"], "quant_type": [scheme.split("_", 1)[1].upper()]}:
        raise PipelineError(f"{wanted} with kv_cache_quant_scheme {scheme}, but {MODEL_ONNX}'s KV cache is "
                            f"{kv or 'not quantized'}")
    if not scheme and kv:
        raise PipelineError(f"{wanted} without kv_cache_quant_scheme, but {MODEL_ONNX}'s KV cache is {kv}")
    if variant.precision in ("int4", "int8"):
        bits = 4 if variant.precision == "int4" else 8
        if nbits["count"] == 0:
            raise PipelineError(
                f"{wanted}, but {MODEL_ONNX} has no MatMulNBits (weights {', '.join(sorted(floats))}): not quantized"
            )
        # algo_config *_last / *_mixed put the LM head (and some layers) at int8 on purpose.
        promoted = variant.precision == "int4" and (variant.algo_config or "").endswith(("_last", "_mixed"))
        if nbits["bits"] != ([4, 8] if promoted else [bits]):
            raise PipelineError(f"{wanted}{f' with algo_config {variant.algo_config}' if promoted else ''}, but "
                                f"{MODEL_ONNX}'s MatMulNBits have bits={nbits['bits']}")
        if promoted and nbits.get("lm_head_bits") != 8:
            raise PipelineError(f"{wanted} with algo_config {variant.algo_config}, but the LM head of {MODEL_ONNX} "
                                f"has bits={nbits.get('lm_head_bits', 4)}")
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


def weight_difference(a: Path, b: Path) -> dict:
    """The share of elements that differ between two exports of the same graph (artifact dirs): of the integer
    initializers (the quantized codes) and of the float ones (scales, norms, a KV cache's scales). Raises
    PipelineError when the graphs differ: then no share means anything."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    def initializers(d: Path) -> dict:
        return {t.name: t for t in onnx.load(str(Path(d) / MODEL_ONNX)).graph.initializer}

    ia, ib = initializers(a), initializers(b)
    if ia.keys() != ib.keys():
        raise PipelineError(f"{Path(b).name}/{MODEL_ONNX}: initializers {sorted(ia.keys() ^ ib.keys())[:3]} are in "
                            f"one export only: not the same graph")
    counts = {"codes": [0, 0], "scales": [0, 0]}
    for name, x in ia.items():
        dx, dy = numpy_helper.to_array(x), numpy_helper.to_array(ib[name])
        if dx.dtype != dy.dtype or dx.shape != dy.shape:
            raise PipelineError(f"{name}: {dx.dtype}{list(dx.shape)} vs {dy.dtype}{list(dy.shape)}: not the same graph")
        kind = counts["codes" if np.issubdtype(dx.dtype, np.integer) else "scales"]
        kind[0] += int(np.count_nonzero(dx != dy))
        kind[1] += dx.size
    return {k: differing / max(total, 1) for k, (differing, total) in counts.items()}
