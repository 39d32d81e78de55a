"""Reading an OpenVINO IR's weights back: every linear layer and embedding, its stored element type, zero points and
group size, traced through NNCF's decompression subgraph. Exports check what they wrote with it (weight_precisions)
and the NPU pre-flight checks what the NPU takes (npu.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.errors import PipelineError

MODEL_XML = "openvino_model.xml"


def _trace_constant(node) -> dict | None:
    """Follow a weight input back through NNCF's decompression subgraph (Constant -> Convert -> [Subtract zero
    point] -> Multiply scale -> [Reshape groups] -> Convert) to its Constants; None if anything else feeds it."""
    kind = node.get_type_name()
    if kind == "Constant":
        return {"weight": node, "scale": None, "zero_point": None}
    if kind in ("Convert", "Reshape"):
        return _trace_constant(node.input_value(0).get_node())
    if kind in ("Subtract", "Multiply"):
        a, b = (_trace_constant(node.input_value(i).get_node()) for i in (0, 1))
        if a is None or b is None:
            return None
        # The quantized data is the larger constant; the scale or zero point has one value per group or channel.
        data, other = (a, b) if _size(a["weight"]) >= _size(b["weight"]) else (b, a)
        data["zero_point" if kind == "Subtract" else "scale"] = other["weight"]
        return data
    return None


def _size(constant) -> int:
    return int(np.prod(list(constant.get_output_shape(0))))


def _lm_head(model):
    """Name of the MatMul that produces the logits (NNCF keeps it, like embeddings, at backup precision)."""
    node = model.output("logits").get_node()
    while node.get_type_name() != "MatMul" and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_name()


def weight_layers(model) -> list[dict]:
    """Every linear layer and embedding whose weight is a constant: name, role, stored type, zero point, group."""
    lm_head = _lm_head(model)
    layers = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("MatMul", "Gather"):
            continue
        for port in (0, 1) if kind == "MatMul" else (0,):
            traced = _trace_constant(op.input_value(port).get_node())
            # Rank-2 weights only: the rotary embedding's inv_freq MatMul ([1, d, 1]) is not a linear layer.
            if traced is None or len(op.input_value(port).get_partial_shape()) != 2:
                continue
            shape = list(traced["weight"].get_output_shape(0))
            if traced["scale"] is None:
                group = None  # not compressed
            elif len(shape) == 3:
                group = shape[-1]  # [out, groups, group_size]
            else:
                group = -1  # [out, in] with one scale per output channel
            role = "embedding" if kind == "Gather" else "lm_head" if op.get_name() == lm_head else "linear"
            stored = traced["weight"].get_output_element_type(0).get_type_name()
            layers.append({
                "name": op.get_friendly_name(),
                "role": role,
                "type": stored,
                "int4": stored in ("i4", "u4"),
                "zero_point": traced["zero_point"] is not None,
                "group_size": group,
                "in_channels": shape[-1] * (shape[-2] if len(shape) == 3 else 1),
                "out_channels": shape[0],
                "params": _size(traced["weight"]),
            })
    return layers


LORA_RANK = 8  # NNCF's AdvancedLoraCorrectionParameters.adapter_rank default


def weight_precisions(model_xml: Path, variant: OpenVINOVariant) -> dict:
    """Read the IR's weights back; raise PipelineError (one line) unless they are what `variant` promises."""
    import openvino as ov

    layers = weight_layers(ov.Core().read_model(model_xml))
    if not layers:
        raise PipelineError(f"{model_xml}: no linear layers with constant weights found")
    where = f"{Path(model_xml).parent.name}/{Path(model_xml).name}"
    int4 = [lay for lay in layers if lay["int4"]]
    # lora_correction adds two int8 adapter MatMuls (rank x in, out x rank) beside each INT4 layer; they are not
    # the model's layers and the ratio does not count them.
    adapters = [lay for lay in layers if getattr(variant, "lora_correction", False) and lay["role"] == "linear"
                and not lay["int4"] and min(lay["in_channels"], lay["out_channels"]) == LORA_RANK]
    ratio_defining = [lay for lay in layers if lay["role"] == "linear" and lay not in adapters]
    fallbacks = []  # int4 only

    def fail(problem: str, bad: list[dict]) -> PipelineError:
        return PipelineError(f"{where}: {problem} ({len(bad)} of {len(layers)} layers, e.g. {bad[0]['name']})")

    if variant.weight_format == "fp16":
        bad = [lay for lay in layers if lay["type"] != "f16"]
        if bad:
            found = ", ".join(sorted({lay["type"] for lay in bad}))
            raise fail(f"fp16 variant but weights are {found}, not f16", bad)
    elif variant.weight_format == "int8":
        want = "i8" if variant.sym else "u8"
        bad = [lay for lay in layers if lay["type"] != want or lay["zero_point"] == variant.sym]
        if bad:
            raise fail(f"int8 {'sym' if variant.sym else 'asym'} variant but weights are not all {want}"
                       f"{' without' if variant.sym else ' with'} zero points", bad)
    else:
        want, other = ("i4", "u4") if variant.sym else ("u4", "i4")
        bad = [lay for lay in int4 if lay["type"] == other or lay["zero_point"] == variant.sym]
        if bad:
            found = "u4 with zero points (asymmetric)" if variant.sym else "i4 without zero points (symmetric)"
            raise fail(f"int4 {'sym' if variant.sym else 'asym'} variant but int4 weights are {found}", bad)
        if not int4:
            found = ", ".join(sorted({lay["type"] for lay in layers}))
            raise fail(f"int4 variant but no weight is int4 (found {found})", layers)
        # Layers whose input channels the group doesn't divide took NNCF's fallback: `adjust` gives the largest
        # power of two that divides them (>= 32) or else the backup precision; `ignore` leaves them uncompressed.
        # Recorded with what each got (under ratio < 1 a backup precision may also be the ratio's choice).
        fits = {lay["name"]: variant.group_size == -1 or lay["in_channels"] % variant.group_size == 0 for lay in layers}
        fallbacks = [
            {k: lay[k] for k in ("name", "type", "group_size", "in_channels")}
            for lay in ratio_defining
            if not fits[lay["name"]]
        ]
        ignored = variant.group_size_fallback == "ignore"
        bad = [lay for lay in layers if lay["group_size"] is None and not (ignored and not fits[lay["name"]])]
        if bad:
            raise fail("int4 variant but some weights are not compressed", bad)
        bad = [lay for lay in int4 if fits[lay["name"]] and lay["group_size"] != variant.group_size]
        if bad:
            found = ", ".join(sorted({str(lay["group_size"]) for lay in bad}))
            raise fail(f"int4 group size {found} where {variant.group_size} was asked", bad)
        bad = [lay for lay in ratio_defining if fits[lay["name"]] and not lay["int4"]]
        if variant.ratio == 1.0 and bad:
            raise fail(f"ratio 1.0 but linear layers are {', '.join(sorted({lay['type'] for lay in bad}))}", bad)
    int4_linear = [lay for lay in ratio_defining if lay["int4"]]
    return {
        **({"lora_adapters": len(adapters)} if adapters else {}),
        "layers": len(layers),
        "element_types": dict(sorted(Counter(lay["type"] for lay in layers).items())),
        "zero_points": sum(lay["zero_point"] for lay in layers),
        "group_sizes": dict(sorted(Counter(str(lay["group_size"]) for lay in layers if lay["group_size"]).items())),
        "fallbacks": fallbacks,
        # Of the layers the ratio applies to (all linear layers but embeddings and lm_head); NNCF's ratio counts
        # parameters and stops below it, so on a small model the int4 share can be well under the ratio asked.
        "int4_fraction": round(len(int4_linear) / max(len(ratio_defining), 1), 4),
        "int4_param_fraction": round(
            sum(lay["params"] for lay in int4_linear) / max(sum(lay["params"] for lay in ratio_defining), 1), 4
        ),
    }


def weight_difference(a: Path, b: Path) -> dict:
    """The share of elements that differ between two IRs of the same graph (artifact dirs): of the integer constants
    (the quantized codes, packed int4 compared by byte) and of the float ones (scales, AWQ's multipliers, the
    weights left in f16). Raises PipelineError when the graphs differ: then no share means anything."""
    import openvino as ov

    def constants(d: Path) -> list:
        model = ov.Core().read_model(Path(d) / MODEL_XML)
        return [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]

    ca, cb = constants(a), constants(b)
    if len(ca) != len(cb):
        raise PipelineError(f"{Path(b).name}/{MODEL_XML}: {len(cb)} constants, {len(ca)} in {Path(a)}: not the same "
                            "graph")
    counts = {"codes": [0, 0], "scales": [0, 0]}
    for x, y in zip(ca, cb):
        if x.get_element_type() != y.get_element_type() or x.get_output_shape(0) != y.get_output_shape(0):
            raise PipelineError(f"{x.get_friendly_name()}: {x.get_element_type()}{x.get_output_shape(0)} vs "
                                f"{y.get_element_type()}{y.get_output_shape(0)}: not the same graph")
        dx, dy = x.get_data(), y.get_data()
        kind = counts["codes" if x.get_element_type().is_integral() else "scales"]
        kind[0] += int(np.count_nonzero(dx != dy))
        kind[1] += dx.size
    return {k: differing / max(total, 1) for k, (differing, total) in counts.items()}
